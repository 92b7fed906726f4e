"""torchrun worker (2 ranks, DP=2, gloo, CPU): checkpoints of the sharded optimizers.

Cases at DP=2: ``adam`` (ZeRO-1 DistributedOptimizer, fp32), ``adam_bf16`` (ZeRO-1 with bf16 parameters
and fp32 main shards), ``adam_layerwise`` (adam under the layer-wise flag: ZeRO-1 over all-reduced
gradients), ``muon`` (LayerWiseDistributedOptimizer), ``adam_ddp`` and ``muon_ddp`` (DDP with
the plain, replicated optimizer); at TP=2 (DP=1): ``muon_tp2`` (tensor-parallel Muon, duplicated mode).

``--mode first``: per case, an uninterrupted run of STEPS steps (rank 0 writes its losses and final
parameters to ``<root>/<case>_full.pt``), then a fresh run of SPLIT steps that saves a checkpoint to
``<root>/<case>_ckpt`` and writes its losses to ``<root>/<case>_first.pt``.
``--mode resume`` (a new torchrun launch): per case, a model built from another init seed and a fresh
optimizer load ``<root>/<case>_ckpt`` and train the remaining steps (``<root>/<case>_resumed.pt``).
Then the single-process plain checkpoints ``<root>/<case>_plain_ckpt`` (written by pytest) are loaded
into the DP=2 sharded optimizers and compared, by name, with the full tensors read from the checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
from typing import Dict, List

import torch
import torch.distributed as dist

from ckpt_worker import check_equal_to_checkpoint
from megatron_opt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from megatron_opt.config import OptimizerConfig
from megatron_opt.distributed import DDPConfig, DistributedDataParallel
from megatron_opt.distributed.distrib_optimizer import finish_param_sync
from megatron_opt.factory import get_megatron_optimizer
from megatron_opt.parallel import ProcessGroupCollection
from training.model import GPT, GPTConfig
from training.pipeline import forward_backward

SEQ = 16
STEPS = 6
SPLIT = 3
PLAIN_CONTINUE = 2
"""Steps the DP=2 sharded optimizer trains after loading a single-process checkpoint."""
MICRO_PER_GLOBAL = 2
MODEL = GPTConfig(hidden_size=32, num_layers=2, num_attention_heads=4, seq_length=SEQ, tie_embeddings=False)
SHARDED_CASES = ("adam", "adam_bf16", "adam_layerwise", "muon")
"""Cases whose DP=2 optimizer shards its state (their checkpoints also load into a plain optimizer)."""
CASES = SHARDED_CASES + ("adam_ddp", "muon_ddp", "muon_tp2")
TP_SIZE = {"muon_tp2": 2}


def case_groups(case: str) -> ProcessGroupCollection:
    """The case's layout over the launch's ranks (a collective: every rank calls it for every case)."""
    return ProcessGroupCollection.initialize(TP_SIZE.get(case, 1), 1)


def opt_config(case: str, distributed: bool) -> OptimizerConfig:
    """Clipping off: the runs are compared bitwise. ``distributed``: the case's sharded optimizer."""
    distributed = distributed and case in SHARDED_CASES
    if case.startswith("adam"):
        # adam under the layer-wise flag: ZeRO-1 slices of all-reduced gradients (what Muon's scalar params get)
        layer_wise = case == "adam_layerwise"
        return OptimizerConfig(optimizer="adam", lr=3e-3, weight_decay=0.01, clip_grad=0.0, bf16=(case == "adam_bf16"),
                               use_distributed_optimizer=distributed and not layer_wise,
                               use_layer_wise_distributed_optimizer=distributed and layer_wise)
    return OptimizerConfig(optimizer="muon", lr=2e-2, weight_decay=0.01, clip_grad=0.0, muon_fp32_matmul_prec="highest",
                           use_layer_wise_distributed_optimizer=distributed)


def build(case: str, pgs: ProcessGroupCollection, distributed: bool = True, seed: int = MODEL.seed):
    dtype = torch.bfloat16 if case == "adam_bf16" else torch.float32
    gpt = GPT(dataclasses.replace(MODEL, seed=seed, params_dtype=dtype), pgs)
    if distributed:
        # ZeRO-1 needs DDP with sharded buffers; the layer-wise and plain optimizers need all-reduce DDP
        zero = case in ("adam", "adam_bf16")
        model = DistributedDataParallel(gpt, DDPConfig(use_distributed_optimizer=zero), pgs)
    else:
        model = gpt
    return model, get_megatron_optimizer(opt_config(case, distributed), [model], pg_collection=pgs)


def global_microbatches(step: int) -> List[tuple]:
    g = torch.Generator().manual_seed(1000 + step)
    return [(torch.randint(0, MODEL.vocab_size, (2, SEQ), generator=g), torch.randint(0, MODEL.vocab_size, (2, SEQ), generator=g))
            for _ in range(MICRO_PER_GLOBAL)]


def train(model, opt, pgs: ProcessGroupCollection, first: int, last: int) -> List[float]:
    """Steps ``first .. last-1``; each DP rank takes its share of the global batch."""
    losses = []
    for step in range(first, last):
        if hasattr(model, "zero_grad_buffer"):
            model.zero_grad_buffer()
        opt.zero_grad()
        micro = global_microbatches(step)
        per_rank = len(micro) // pgs.dp_size
        result = forward_backward(model, micro[pgs.dp_rank * per_rank:(pgs.dp_rank + 1) * per_rank], pgs)
        ok, _, _ = opt.step()
        assert ok, f"step {step} was skipped"
        losses.append(float(result.loss))
    finish_param_sync(opt)
    return losses


def params_of(model) -> Dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def log(msg: str) -> None:
    print(f"[rank {dist.get_rank()}] {msg}", flush=True)


def mode_first(root: str) -> None:
    for case in CASES:
        pgs = case_groups(case)
        model, opt = build(case, pgs)
        losses = train(model, opt, pgs, 0, STEPS)
        if dist.get_rank() == 0:
            torch.save({"losses": losses, "params": params_of(model)}, os.path.join(root, f"{case}_full.pt"))
        model, opt = build(case, pgs)
        losses = train(model, opt, pgs, 0, SPLIT)
        save_checkpoint(os.path.join(root, f"{case}_ckpt"), SPLIT, [model], opt, pg_collection=pgs,
                        args={"case": case}, consumed_train_samples=SPLIT * 4)
        if dist.get_rank() == 0:
            torch.save({"losses": losses, "params": params_of(model)}, os.path.join(root, f"{case}_first.pt"))
        log(f"FIRST_OK {case} losses={losses}")


def mode_resume(root: str) -> None:
    for case in CASES:
        pgs = case_groups(case)
        # another init seed: only a working load makes this model equal to the saved one
        model, opt = build(case, pgs, seed=4321)
        loaded = load_checkpoint(os.path.join(root, f"{case}_ckpt"), [model], opt, pg_collection=pgs)
        assert loaded is not None and loaded.loaded_optimizer and loaded.iteration == SPLIT, loaded
        n = check_equal_to_checkpoint(loaded.path, model, opt, pgs)
        losses = train(model, opt, pgs, loaded.iteration, STEPS)
        if dist.get_rank() == 0:
            torch.save({"losses": losses, "params": params_of(model)}, os.path.join(root, f"{case}_resumed.pt"))
        log(f"RESUME_OK {case} tensors={n} rng={loaded.loaded_rng} losses={losses}")
        if case not in SHARDED_CASES:
            continue

        # single-process plain checkpoint -> DP=2 sharded optimizer
        plain = os.path.join(root, f"{case}_plain_ckpt")
        model, opt = build(case, pgs, seed=4321)
        try:
            loaded = load_checkpoint(plain, [model], opt, pg_collection=pgs)
        except CheckpointError as exc:  # reported to pytest, which fails on it; the launch goes on
            log(f"PLAIN_TO_DIST_FAIL {case} {exc}")
            continue
        assert loaded is not None and loaded.loaded_optimizer, loaded
        n = check_equal_to_checkpoint(loaded.path, model, opt, pgs)
        losses = train(model, opt, pgs, loaded.iteration, loaded.iteration + PLAIN_CONTINUE)
        if dist.get_rank() == 0:  # pytest compares them with the single-process run's own next steps
            torch.save({"losses": losses}, os.path.join(root, f"{case}_plain_to_dist.pt"))
        log(f"PLAIN_TO_DIST_OK {case} tensors={n}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("first", "resume"), required=True)
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    assert dist.get_world_size() == 2, dist.get_world_size()
    if args.mode == "first":
        mode_first(args.root)
    else:
        mode_resume(args.root)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
