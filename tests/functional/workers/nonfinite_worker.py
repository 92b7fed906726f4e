"""torchrun worker (2 ranks, DP=2, gloo): a NaN or Inf in ONE rank's gradient at step BAD.

For every case (optimizer × sharding × precision × value × where) the worker trains a tiny GPT for
STEPS steps on fixed global batches. At step BAD rank 1 (only) corrupts its gradient:

* ``where=local``: one element of one parameter's local gradient, *before* the DP reduction (a bad
  micro-batch or a fault in backward); the reduction carries it to the other rank's gradient.
* ``where=reduced``: every element of rank 1's already reduced ``main_grad`` (a fault after the
  communication), so only rank 1 holds the bad values.

Recorded per case and rank: the step results (updated, grad norm), full model params after every step,
and snapshots of this rank's optimizer (main params + state tensors + loss scaler) just before and just
after step BAD. Each configuration also has a reference run that never sees batch BAD (steps
0..BAD-1, then BAD+1..STEPS-1): after the skipped step, the injected run must equal it bitwise.
"""

from __future__ import annotations

import argparse
import datetime
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from megatron_opt.config import OptimizerConfig
from megatron_opt.distributed import DDPConfig, DistributedDataParallel
from megatron_opt.distributed.distrib_optimizer import finish_param_sync
from megatron_opt.factory import get_megatron_optimizer
from megatron_opt.optimizer import ChainedOptimizer
from megatron_opt.parallel import ProcessGroupCollection
from training.model import GPT, GPTConfig
from training.pipeline import finalize_model_grads, forward_backward

SEQ = 16
STEPS = 4
BAD = 2
BAD_RANK = 1


def gpt(dtype: torch.dtype) -> GPTConfig:
    return GPTConfig(hidden_size=32, num_layers=2, num_attention_heads=4, seq_length=SEQ, tie_embeddings=False, params_dtype=dtype)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Case:
    optimizer: str  # adam | muon
    sharded: bool  # ZeRO DistributedOptimizer (adam) / LayerWiseDistributedOptimizer (muon)
    precision: str  # fp32 | bf16 | fp16
    on_device: bool = False  # skip-step decided on device (skip_step_sigma on, skip_on_device forced)

    @property
    def name(self) -> str:
        sharding = ("distributed" if self.sharded else "plain") + ("-ondevice" if self.on_device else "")
        return f"{self.optimizer}/{sharding}/{self.precision}"

    def opt_config(self) -> OptimizerConfig:
        kw = dict(bf16=self.precision == "bf16", fp16=self.precision == "fp16", clip_grad=1.0, weight_decay=0.01)
        if self.on_device:
            kw.update(skip_step_sigma=6.0)  # the window needs 10 accepted steps: only non-finite norms skip here
        if self.precision == "fp16":
            kw.update(initial_loss_scale=2.0**10)  # small enough that the clean steps never overflow
        if self.optimizer == "adam":
            return OptimizerConfig(optimizer="adam", lr=3e-3, use_distributed_optimizer=self.sharded, **kw)
        return OptimizerConfig(optimizer="muon", lr=2e-2, muon_fp32_matmul_prec="highest",
                               use_layer_wise_distributed_optimizer=self.sharded, **kw)

    def ddp_config(self) -> DDPConfig:
        return DDPConfig(use_distributed_optimizer=self.sharded and self.optimizer == "adam")


CASES = [Case(o, s, p) for o in ("adam", "muon") for s in (False, True) for p in ("fp32", "bf16")] + [
    Case("adam", False, "fp16"), Case("adam", True, "fp16")] + [
    Case(o, False, "fp32", on_device=True) for o in ("adam", "muon")]


def injections(case: Case) -> List[tuple]:
    """Every (value, where) pair in fp32; in bf16/fp16 a NaN before and an Inf after the reduction (keeps the run short)."""
    nan, inf = float("nan"), float("inf")
    if case.precision == "fp32":
        return [(nan, "local"), (nan, "reduced"), (inf, "local"), (inf, "reduced")]
    return [(nan, "local"), (inf, "reduced")]


def global_microbatches(step: int) -> List[tuple]:
    g = torch.Generator().manual_seed(1000 + step)
    return [(torch.randint(0, 256, (2, SEQ), generator=g), torch.randint(0, 256, (2, SEQ), generator=g)) for _ in range(2)]


def leaves(opt) -> list:
    if isinstance(opt, ChainedOptimizer):
        return [leaf for c in opt.chained_optimizers for leaf in leaves(c)]
    return [opt]


def snapshot(opt) -> dict:
    """This rank's main params, optimizer state tensors and loss-scaler state, cloned."""
    main, state, scalers = [], [], []
    for leaf in leaves(opt):
        inner = leaf.optimizer
        for group in inner.param_groups if inner is not None else []:
            for p in group["params"]:
                main.append(p.detach().clone())
                st = inner.state.get(p, {})
                state.append({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in st.items()})
        scaler = getattr(leaf, "grad_scaler", None)
        scalers.append(None if scaler is None else scaler.state_dict())
    return {"main": main, "state": state, "scalers": scalers}


def model_params(model) -> Dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def corrupt(model, value: float, where: str) -> None:
    if where == "local":  # one element of one local gradient, before the reduction
        p = next(p for n, p in model.named_parameters() if "layers.1" in n and p.dim() == 2)
        p.main_grad.view(-1)[3] = value
    else:  # the whole reduced gradient of this rank
        for p in model.parameters():
            p.main_grad.fill_(value)


def run(case: Case, pgs: ProcessGroupCollection, inject: Optional[tuple], skip_batch: bool) -> dict:
    """``inject=(value, where)``: rank BAD_RANK corrupts its grads at step BAD; ``skip_batch``: never see batch BAD."""
    torch.manual_seed(0)
    model = DistributedDataParallel(GPT(gpt(DTYPES[case.precision]), pgs), case.ddp_config(), pgs)
    opt = get_megatron_optimizer(case.opt_config(), [model], pg_collection=pgs)
    if case.on_device:
        opt.skip_on_device = True
    scale = opt.scale_loss if case.precision == "fp16" else None
    out: dict = {"steps": {}, "params": {}}
    for step in range(STEPS):
        if skip_batch and step == BAD:
            continue
        model.zero_grad_buffer()
        opt.zero_grad()
        micro = global_microbatches(step)
        mine = micro[pgs.dp_rank:pgs.dp_rank + 1]
        bad_here = inject is not None and step == BAD
        forward_backward(model, mine, pgs, scale_loss=scale, finalize_grads=False)
        if bad_here and inject[1] == "local" and pgs.dp_rank == BAD_RANK:
            corrupt(model, inject[0], "local")
        finalize_model_grads(model)
        if bad_here and inject[1] == "reduced" and pgs.dp_rank == BAD_RANK:
            corrupt(model, inject[0], "reduced")
        if bad_here:
            finish_param_sync(opt)
            out["before"] = {"params": model_params(model), "opt": snapshot(opt)}
        ok, norm, _ = opt.step()
        finish_param_sync(opt)
        if bad_here:
            out["after"] = {"params": model_params(model), "opt": snapshot(opt)}
        out["steps"][step] = (bool(ok), norm)
        out["params"][step] = model_params(model)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", default="all", help="comma-separated case names, or 'all'")
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    pgs = ProcessGroupCollection.initialize(1, 1)
    wanted = None if args.cases == "all" else set(args.cases.split(","))
    results: dict = {}
    for case in CASES:
        if wanted is not None and case.name not in wanted:
            continue
        results[f"{case.name}/reference"] = run(case, pgs, None, skip_batch=True)
        for value, where in injections(case):
            results[f"{case.name}/{value}/{where}"] = run(case, pgs, (value, where), skip_batch=False)
    torch.save(results, os.path.join(args.out, f"nonfinite_rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
