"""torchrun worker for the sharded-optimizer tests (gloo, CPU).

``--suite two`` (2 ranks, DP=2): every case trains a tiny GPT for STEPS steps on the same global
batches and records per-step losses, grad norms and full parameters. Rank 0 also runs each case's
undistributed DP=1 reference in one process (no communication) on all micro-batches.
``--suite four`` (4 ranks, TP=2 × DP=2): layer-wise Muon and ZeRO-1 Adam against a single-process
TP=1 DP=1 run on rank 0.
Every rank writes ``<out>/<suite>_rank<r>.pt``; the pytest side compares the numbers.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from megatron_opt.config import OptimizerConfig
from megatron_opt.distributed import DDPConfig, DistributedDataParallel
from megatron_opt.distributed.distrib_optimizer import finish_param_sync
from megatron_opt.factory import get_megatron_optimizer
from megatron_opt.optimizer import ChainedOptimizer
from megatron_opt.parallel import ProcessGroupCollection, all_gather_concat
from megatron_opt.qk_clip import clip_qk
from training.model import GPT, GPTConfig
from training.pipeline import forward_backward

SEQ = 16
STEPS = 10
# One micro-batch of 2 sequences per DP rank: DP=1 then accumulates g0/2 + g1/2 in the same order the DP=2
# all-reduce sums them, so the undistributed reference sees bitwise-equal gradients.
MICRO_PER_GLOBAL = 2
FP32_MODEL = GPTConfig(hidden_size=32, num_layers=2, num_attention_heads=4, seq_length=SEQ, tie_embeddings=False)
BF16_MODEL = GPTConfig(hidden_size=32, num_layers=2, num_attention_heads=4, seq_length=SEQ, tie_embeddings=False,
                       params_dtype=torch.bfloat16)


def global_microbatches(step: int) -> List[tuple]:
    g = torch.Generator().manual_seed(1000 + step)
    return [(torch.randint(0, 256, (2, SEQ), generator=g), torch.randint(0, 256, (2, SEQ), generator=g))
            for _ in range(MICRO_PER_GLOBAL)]


def full_params(model: torch.nn.Module, pgs: ProcessGroupCollection) -> Dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        t = p.detach().float().clone()
        out[name] = all_gather_concat(t, pgs.tp, p.partition_dim) if getattr(p, "tensor_model_parallel", False) else t
    return out


def leaves(opt) -> list:
    return [leaf for c in opt.chained_optimizers for leaf in leaves(c)] if isinstance(opt, ChainedOptimizer) else [opt]


def train(opt_config: OptimizerConfig, gpt_config: GPTConfig, ddp_config: DDPConfig, pgs: ProcessGroupCollection,
          steps: int = STEPS, snapshots: bool = True, save_at: Optional[int] = None, resume: Optional[dict] = None,
          qk_clip_tau: Optional[float] = None) -> dict:
    """Train and record; ``save_at``: also return the optimizer state_dict after that many steps;
    ``resume``: ``{'state': ..., 'params': ..., 'start': k}`` continues a run from step k;
    ``qk_clip_tau``: QK-clip after every step (the model must record its max logits), heads clipped in ``clipped``."""
    model = DistributedDataParallel(GPT(gpt_config, pgs), ddp_config, pgs)
    start = 0
    opt = get_megatron_optimizer(opt_config, [model], pg_collection=pgs)
    if resume is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(resume["params"][name])
        opt.reload_model_params()
        opt.load_state_dict(resume["state"])
        start = resume["start"]
    out: dict = {"losses": [], "norms": [], "params": [], "leaf_types": [type(x).__name__ for x in leaves(opt)]}
    for step in range(start, steps):
        model.zero_grad_buffer()
        opt.zero_grad()
        micro = global_microbatches(step)
        per_rank = len(micro) // pgs.dp_size
        mine = micro[pgs.dp_rank * per_rank:(pgs.dp_rank + 1) * per_rank]
        result = forward_backward(model, mine, pgs)
        ok, norm, _ = opt.step()
        assert ok, f"step {step} was skipped"
        if qk_clip_tau is not None:
            clipped = clip_qk(model.module.qk_clip_targets(), qk_clip_tau, optimizer=opt, dp_group=pgs.dp).clipped_heads
            out.setdefault("clipped", []).append(clipped)
        out["losses"].append(result.loss)
        out["norms"].append(norm)
        if snapshots:
            finish_param_sync(opt)
            out["params"].append(full_params(model, pgs))
        if save_at is not None and step + 1 == save_at:
            finish_param_sync(opt)
            # torch's state_dict holds live references: copy, or later steps change the saved state
            out["saved"] = {"state": copy.deepcopy(opt.state_dict()),
                            "params": {n: p.detach().clone() for n, p in model.named_parameters()},
                            "start": save_at}
    finish_param_sync(opt)
    out["final"] = full_params(model, pgs)
    out["opt"] = opt
    return out


def strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("opt", "saved")}


# Clipping is off in the bitwise comparisons: the sharded grad norm is summed in another order (equal to
# ~1e-7), and Adam's and Muon's first steps turn a 1-ulp change of a near-zero gradient into a full-lr change
# of that element. Clipping with the global norm is checked with SGD (linear in the gradient).
def adam(**kw) -> OptimizerConfig:
    return OptimizerConfig(optimizer="adam", lr=3e-3, weight_decay=0.01, clip_grad=0.0, **kw)


def muon(**kw) -> OptimizerConfig:
    return OptimizerConfig(optimizer="muon", lr=2e-2, weight_decay=0.01, clip_grad=0.0, muon_fp32_matmul_prec="highest", **kw)


def soap_from_cli(world_size: int, *flags: str) -> OptimizerConfig:
    """SOAP as the real CLI resolves it: ``--optimizer soap --use-distributed-optimizer`` → layer-wise."""
    from arguments import parse_and_validate  # tests may use arguments/; the library never does

    argv = ["--optimizer", "soap", "--lr", "3e-3", "--weight-decay", "0.01", "--clip-grad", "0",
            "--soap-precondition-frequency", "3", "--train-iters", "10", *flags]
    return parse_and_validate(argv, world_size)[1]


def sgd(**kw) -> OptimizerConfig:
    return OptimizerConfig(optimizer="sgd", lr=0.5, weight_decay=0.01, sgd_momentum=0.9, clip_grad=0.5, **kw)


def suite_two(rank: int) -> dict:
    pgs = ProcessGroupCollection.initialize(1, 1)
    single = ProcessGroupCollection.single_process()
    zero1 = DDPConfig(use_distributed_optimizer=True)
    allreduce = DDPConfig()
    res: dict = {}

    # ZeRO-1 Adam fp32: against DP=2 without sharding (same grads) and DP=1
    run = train(adam(use_distributed_optimizer=True), FP32_MODEL, zero1, pgs, save_at=5)
    res["adam_fp32/zero1"] = strip(run)
    res["adam_fp32/dp2_plain"] = strip(train(adam(), FP32_MODEL, allreduce, pgs))
    # state_dict round trip on the same layout: resume at step 5, finish, compare with the uninterrupted run
    res["adam_fp32/resumed"] = strip(train(adam(use_distributed_optimizer=True), FP32_MODEL, zero1, pgs, resume=run["saved"]))
    # per-parameter full state gathered over DP (checkpoint API)
    named = run["opt"].named_full_state()
    res["adam_fp32/named_state"] = named
    # scatter it back into a fresh optimizer and gather again
    fresh_model = DistributedDataParallel(GPT(FP32_MODEL, pgs), zero1, pgs)
    fresh = get_megatron_optimizer(adam(use_distributed_optimizer=True), [fresh_model], pg_collection=pgs)
    fresh.init_state()
    fresh.load_named_full_state(named)
    res["adam_fp32/named_state_reloaded"] = fresh.named_full_state()

    # ZeRO-1 Adam bf16 (fp32 main shards) and Lion fp32
    res["adam_bf16/zero1"] = strip(train(adam(use_distributed_optimizer=True, bf16=True), BF16_MODEL, zero1, pgs))
    res["sgd_clip/zero1"] = strip(train(sgd(use_distributed_optimizer=True), FP32_MODEL, zero1, pgs))
    res["lion_fp32/zero1"] = strip(train(OptimizerConfig(optimizer="lion", lr=1e-3, use_distributed_optimizer=True), FP32_MODEL, zero1, pgs))

    # overlap flags: overlap_grad_reduce + overlap_param_gather == neither, same buckets
    buckets = dict(bucket_size=3000, use_distributed_optimizer=True)
    res["overlap/off"] = strip(train(adam(use_distributed_optimizer=True), FP32_MODEL, DDPConfig(**buckets), pgs, snapshots=False))
    res["overlap/on"] = strip(train(adam(use_distributed_optimizer=True, overlap_param_gather=True), FP32_MODEL,
                                    DDPConfig(overlap_grad_reduce=True, **buckets), pgs, snapshots=False))

    # layer-wise Muon (scalar params: ZeRO-1 Adam over the all-reduced buffers)
    res["muon_fp32/layer_wise"] = strip(train(muon(use_layer_wise_distributed_optimizer=True), FP32_MODEL, allreduce, pgs))
    res["muon_bf16/layer_wise"] = strip(train(muon(use_layer_wise_distributed_optimizer=True, bf16=True), BF16_MODEL, allreduce, pgs))
    # the Gram-space Newton-Schulz (QKV 96x32 and MLP 128x32 / 32x128 take it; the 32x32 projection does not)
    res["muon_gram_fp32/layer_wise"] = strip(train(muon(use_layer_wise_distributed_optimizer=True, muon_ns_algorithm="gram"),
                                                   FP32_MODEL, allreduce, pgs))
    # layer-wise SOAP (precondition refresh every 3 steps: eigh at step 1, QR refresh at 3, 6, 9)
    soap = soap_from_cli(2, "--use-distributed-optimizer")
    assert soap.use_layer_wise_distributed_optimizer and not soap.use_distributed_optimizer
    res["soap_fp32/layer_wise"] = strip(train(soap, FP32_MODEL, allreduce, pgs))
    res["soap_bf16/layer_wise"] = strip(train(soap_from_cli(2, "--use-distributed-optimizer", "--bf16"), BF16_MODEL, allreduce, pgs))
    res["muon_overlap/off"] = strip(train(muon(use_layer_wise_distributed_optimizer=True), FP32_MODEL,
                                          DDPConfig(bucket_size=3000), pgs, snapshots=False))
    res["muon_overlap/on"] = strip(train(muon(use_layer_wise_distributed_optimizer=True, overlap_param_gather=True), FP32_MODEL,
                                         DDPConfig(bucket_size=3000, overlap_grad_reduce=True), pgs, snapshots=False))

    if rank == 0:
        ref = train(adam(), FP32_MODEL, allreduce, single)
        res["adam_fp32/ref"] = strip(ref)
        ref_named = {}
        for leaf in leaves(ref["opt"]):
            names = [n for g in leaf.param_groups for n in g["param_names"]]
            params = [p for g in leaf.param_groups for p in g["params"]]
            for n, p in zip(names, params):
                ref_named[n] = {k: v.clone() for k, v in leaf.state[p].items()}
        res["adam_fp32/ref_named_state"] = ref_named
        res["adam_bf16/ref"] = strip(train(adam(bf16=True), BF16_MODEL, allreduce, single))
        res["sgd_clip/ref"] = strip(train(sgd(), FP32_MODEL, allreduce, single))
        res["lion_fp32/ref"] = strip(train(OptimizerConfig(optimizer="lion", lr=1e-3), FP32_MODEL, allreduce, single))
        res["muon_fp32/ref"] = strip(train(muon(), FP32_MODEL, allreduce, single))
        res["muon_bf16/ref"] = strip(train(muon(bf16=True), BF16_MODEL, allreduce, single))
        res["muon_gram_fp32/ref"] = strip(train(muon(muon_ns_algorithm="gram"), FP32_MODEL, allreduce, single))
        res["soap_fp32/ref"] = strip(train(soap_from_cli(1), FP32_MODEL, allreduce, single))
        res["soap_bf16/ref"] = strip(train(soap_from_cli(1, "--bf16"), BF16_MODEL, allreduce, single))
    return res


def suite_four(rank: int) -> dict:
    """TP=2 × DP=2 (ranks 0-3) against TP=2 × DP=1 on ranks 0 and 1."""
    pgs = ProcessGroupCollection.initialize(2, 1)
    first_pair = dist.new_group([0, 1])  # collective: every rank creates it
    config = GPTConfig(hidden_size=32, num_layers=2, num_attention_heads=4, num_query_groups=2, seq_length=SEQ)
    res = {
        "muon/tp2dp2": strip(train(muon(use_layer_wise_distributed_optimizer=True), config, DDPConfig(), pgs)),
        "adam/tp2dp2": strip(train(adam(use_distributed_optimizer=True), config, DDPConfig(use_distributed_optimizer=True), pgs)),
        "tp_rank": pgs.tp_rank,
        "dp_rank": pgs.dp_rank,
    }
    if rank in (0, 1):
        ref_pgs = ProcessGroupCollection(tp=first_pair, mp=first_pair, world=first_pair, tp_size=2, tp_rank=rank, pp_ranks=[rank])
        res["muon/ref"] = strip(train(muon(), config, DDPConfig(), ref_pgs))
        res["adam/ref"] = strip(train(adam(), config, DDPConfig(), ref_pgs))
    return res


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", choices=("two", "four"), required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    results = suite_two(rank) if args.suite == "two" else suite_four(rank)
    torch.save(results, os.path.join(args.out, f"{args.suite}_rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
