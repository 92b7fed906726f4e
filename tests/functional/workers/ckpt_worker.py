"""torchrun worker for the checkpoint resharding tests (gloo, CPU).

``--plan reshard`` (2 ranks): a chain of load → check → train → save over different layouts,
each load reading the previous layout's checkpoint::

    single (world 1, written by pytest) → DP=2 (check only) → TP=2 → save tp2
    tp2 → TP=1,DP=2 → save dp2 → PP=2 → save pp2 → TP=2 (check only)

"check" = every local parameter and optimizer-state tensor equals the matching slice of the full
tensor read back from the checkpoint (``read_full_checkpoint``), the checkpoint written by a
layout equals that layout's in-memory state gathered over TP, and the loading layout trains the
next steps with the losses the saving layout had for them (``check_continuation``).
``--plan wide`` (4 ranks): the single-process checkpoint loads at DP=4 and at TP=2×DP=2.
``--plan kill`` (2 ranks): save iteration 1, then rank 1 SIGKILLs itself in the middle of saving
iteration 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import signal
import sys
import threading
import time
from typing import List, Tuple

import torch
import torch.distributed as dist

from megatron_opt.checkpointing import (
    load_checkpoint,
    model_key,
    named_optimizer_state,
    optimizer_key,
    read_full_checkpoint,
    save_checkpoint,
)
from megatron_opt.config import OptimizerConfig
from megatron_opt.factory import get_megatron_optimizer
from megatron_opt.parallel import ProcessGroupCollection, all_gather_concat, all_reduce
from training.model import GPT, GPTConfig
from training.pipeline import forward_backward

SEQ = 8
VOCAB = 64


def gpt_config(bf16: bool = False) -> GPTConfig:
    return GPTConfig(hidden_size=32, num_layers=2, num_attention_heads=4, num_query_groups=2, seq_length=SEQ,
                     vocab_size=VOCAB, params_dtype=torch.bfloat16 if bf16 else torch.float32)


def build(pgs: ProcessGroupCollection, bf16: bool = False):
    model = GPT(gpt_config(bf16), pgs)
    config = OptimizerConfig(optimizer="adam", lr=1e-3, bf16=bf16)
    return model, get_megatron_optimizer(config, [model], pg_collection=pgs)


def microbatches(step: int, n: int = 2) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1000 + step)
    return [(torch.randint(0, VOCAB, (2, SEQ), generator=g), torch.randint(0, VOCAB, (2, SEQ), generator=g)) for _ in range(n)]


def train_losses(model, optimizer, pgs: ProcessGroupCollection, steps: int, first_step: int = 0) -> List[float]:
    """Steps ``first_step ..``; every DP rank sees the same micro-batches, so any layout trains the same math."""
    losses = []
    for s in range(first_step, first_step + steps):
        optimizer.zero_grad()
        losses.append(forward_backward(model, microbatches(s), pgs).loss)
        for p in model.parameters():
            if p.grad is not None and pgs.dp_size > 1:
                all_reduce(p.grad, pgs.dp)
                p.grad /= pgs.dp_size
        optimizer.step()
    return losses


def train(model, optimizer, pgs: ProcessGroupCollection, steps: int, first_step: int = 0) -> float:
    return train_losses(model, optimizer, pgs, steps, first_step)[-1]


CONTINUE_STEPS = 2
"""After each save the saving layout trains this many more steps; every layout that loads the
checkpoint must train those steps with the same losses (``LOSS_RTOL``: the layouts reduce in
different orders)."""
LOSS_RTOL = 1e-5


def continuation_file(root: str, saved_as: str) -> str:
    return os.path.join(root, f"{saved_as}_continuation.json")


def continue_after_save(root: str, saved_as: str, model, optimizer, pgs: ProcessGroupCollection, first_step: int) -> List[float]:
    """What the saving layout does next; rank 0 writes it for the layouts that load the checkpoint."""
    losses = train_losses(model, optimizer, pgs, CONTINUE_STEPS, first_step)
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(continuation_file(root, saved_as), "w") as f:
            json.dump({"first_step": first_step, "losses": losses}, f)
    if dist.is_initialized():
        dist.barrier()
    return losses


def check_continuation(root: str, saved_as: str, model, optimizer, pgs: ProcessGroupCollection) -> List[float]:
    """Train the saving layout's next steps from the loaded state; the losses must match its own."""
    with open(continuation_file(root, saved_as)) as f:
        expected = json.load(f)
    losses = train_losses(model, optimizer, pgs, len(expected["losses"]), expected["first_step"])
    for got, want in zip(losses, expected["losses"]):
        assert math.isclose(got, want, rel_tol=LOSS_RTOL), f"after loading {saved_as}: losses {losses} != {expected['losses']}"
    return losses


def _slice(full: torch.Tensor, param: torch.Tensor, pgs: ProcessGroupCollection) -> torch.Tensor:
    if pgs.tp_size > 1 and getattr(param, "tensor_model_parallel", False) and full.dim() > 0:
        return full.chunk(pgs.tp_size, dim=param.partition_dim)[pgs.tp_rank]
    return full


def check_equal_to_checkpoint(path: str, model, optimizer, pgs: ProcessGroupCollection) -> int:
    """Every local tensor equals its slice of the full checkpoint tensor (bitwise); returns how many were compared."""
    _, full = read_full_checkpoint(path)
    params = dict(model.named_parameters())
    n = 0
    for name, p in params.items():
        expected = _slice(full[model_key(name)], p, pgs)
        assert torch.equal(p.detach(), expected.to(p.dtype)), f"model {name} differs from {path}"
        n += 1
    for name, entry in named_optimizer_state(optimizer).items():
        for key, tensor in entry.items():
            expected = _slice(full[optimizer_key(name, key)], params[name], pgs)
            assert torch.equal(tensor.cpu(), expected), f"optimizer {name}/{key} differs from {path}"
            n += 1
    return n


def check_saved_matches_memory(path: str, model, optimizer, pgs: ProcessGroupCollection) -> None:
    """The checkpoint holds exactly the in-memory state gathered over TP (what this layout wrote)."""
    _, full = read_full_checkpoint(path)
    params = dict(model.named_parameters())
    for name, p in params.items():
        gathered = all_gather_concat(p.detach(), pgs.tp, p.partition_dim) if (pgs.tp_size > 1 and p.tensor_model_parallel) else p.detach()
        assert torch.equal(gathered, full[model_key(name)]), f"saved model {name} != memory"
    for name, entry in named_optimizer_state(optimizer).items():
        p = params[name]
        for key, t in entry.items():
            sharded = pgs.tp_size > 1 and p.tensor_model_parallel and t.dim() > 0
            gathered = all_gather_concat(t, pgs.tp, p.partition_dim) if sharded else t
            assert torch.equal(gathered.cpu(), full[optimizer_key(name, key)]), f"saved {name}/{key} != memory"


def log(msg: str) -> None:
    print(f"[rank {dist.get_rank()}] {msg}", flush=True)


def plan_reshard(root: str, bf16: bool) -> None:
    steps_done = 4  # the single-process checkpoint is at iteration 4
    src = os.path.join(root, "single")
    chain = [  # (tp, pp, save as, iteration)
        (1, 1, None, None),
        (2, 1, "tp2", 10),
        (1, 1, "dp2", 12),
        (1, 2, "pp2", 14),
        (2, 1, None, None),
    ]
    src_name = "single"
    for tp, pp, save_as, iteration in chain:
        pgs = ProcessGroupCollection.initialize(tp, pp)
        torch.manual_seed(123)  # a fresh model differs from the checkpoint only if loading fails
        model, optimizer = build(pgs, bf16)
        loaded = load_checkpoint(src, [model], optimizer, pg_collection=pgs)
        assert loaded is not None and loaded.loaded_optimizer
        n = check_equal_to_checkpoint(src, model, optimizer, pgs)
        losses = check_continuation(root, src_name, model, optimizer, pgs)
        steps_done += len(losses)
        log(f"LOAD_OK src={src_name} tp={tp} pp={pp} dp={pgs.dp_size} tensors={n} iteration={loaded.iteration} "
            f"continued={losses}")
        if save_as is None:
            continue
        path = save_checkpoint(os.path.join(root, save_as), iteration, [model], optimizer, pg_collection=pgs,
                               args={"tp": tp, "pp": pp}, consumed_train_samples=steps_done * 4)
        check_saved_matches_memory(path, model, optimizer, pgs)
        log(f"SAVE_OK {save_as} loss={losses[-1]:.6f}")
        continue_after_save(root, save_as, model, optimizer, pgs, steps_done)
        src, src_name = path, save_as


def plan_load_wide(root: str) -> None:
    """DP 1→4 and 1 → TP=2×DP=2 (4 ranks): load the single-process checkpoint, check, continue."""
    for tp in (1, 2):
        pgs = ProcessGroupCollection.initialize(tp, 1)
        torch.manual_seed(123)
        model, optimizer = build(pgs)
        loaded = load_checkpoint(os.path.join(root, "single"), [model], optimizer, pg_collection=pgs)
        assert loaded is not None and loaded.loaded_optimizer
        n = check_equal_to_checkpoint(loaded.path, model, optimizer, pgs)
        losses = check_continuation(root, "single", model, optimizer, pgs)
        log(f"LOAD_OK src=single tp={tp} pp=1 dp={pgs.dp_size} tensors={n} iteration={loaded.iteration} continued={losses}")


def plan_kill(root: str) -> None:
    pgs = ProcessGroupCollection.initialize(1, 1)
    model, optimizer = build(pgs)
    # a large extra parameter so that writing iteration 2 takes a while
    model.register_parameter("ballast", torch.nn.Parameter(torch.randn(4_000_000)))
    train(model, optimizer, pgs, 1)
    save_dir = os.path.join(root, "ckpt")
    save_checkpoint(save_dir, 1, [model], optimizer, pg_collection=pgs)
    log("SAVED 1")
    train(model, optimizer, pgs, 1, first_step=1)
    if dist.get_rank() == 1:
        sys.setswitchinterval(1e-5)

        def kill_when_writing() -> None:
            while True:
                for name in os.listdir(save_dir):
                    if name.startswith("iter_0000002.tmp-") and os.path.exists(os.path.join(save_dir, name, "rng", "rank_00001.json")):
                        os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.0001)

        threading.Thread(target=kill_when_writing, daemon=True).start()
    save_checkpoint(save_dir, 2, [model], optimizer, pg_collection=pgs)
    log("SAVED 2 (the kill came too late)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", choices=("reshard", "wide", "kill"), required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    if args.plan == "reshard":
        plan_reshard(args.root, args.bf16)
    elif args.plan == "wide":
        plan_load_wide(args.root)
    else:
        plan_kill(args.root)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
