"""torchrun worker (2 ranks, gloo) for QK-clip under parallel layouts.

Each case trains the tiny GPT of distopt_worker for its STEPS steps with QK-clip after every step
(threshold TAU, low enough that heads are clipped on most steps) and records losses, full params and
clipped-head counts; rank 0 also runs each case's single-process reference.

* DP=2: ZeRO-1 Adam bf16 (main shards) and layer-wise Muon bf16 against DP=1 in one process;
* TP=2 × DP=1: SGD fp32 on a GQA model (each TP rank owns one query group) against TP=1;
* PP=2: the same SGD run on untied embeddings, one layer per stage, against PP=1.
Writes ``<out>/qk_rank<r>.pt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

from distopt_worker import SEQ, adam, muon, strip, train
from megatron_opt.config import OptimizerConfig
from megatron_opt.distributed import DDPConfig
from megatron_opt.parallel import ProcessGroupCollection
from training.model import GPTConfig

TAU = 0.05
BF16 = GPTConfig(hidden_size=32, num_layers=2, num_attention_heads=4, seq_length=SEQ, tie_embeddings=False,
                 params_dtype=torch.bfloat16, record_max_attention_logit=True)
def sgd() -> OptimizerConfig:
    """TP case: SGD is linear in the gradient, so TP's reordered reductions stay at rounding level (Adam's first
    step turns a 1-ulp change of a near-zero gradient into a full-lr change, see distopt_worker)."""
    return OptimizerConfig(optimizer="sgd", lr=0.5, sgd_momentum=0.9, weight_decay=0.01, clip_grad=0.0)


GQA = GPTConfig(hidden_size=32, num_layers=2, num_attention_heads=4, num_query_groups=2, seq_length=SEQ,
                record_max_attention_logit=True)
GQA_UNTIED = dataclasses.replace(GQA, tie_embeddings=False)  # under PP each stage holds its own names


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    single = ProcessGroupCollection.single_process()
    dp2 = ProcessGroupCollection.initialize(1, 1)
    tp2 = ProcessGroupCollection.initialize(2, 1)
    pp2 = ProcessGroupCollection.initialize(1, 2)
    res = {
        "adam_bf16/zero1": strip(train(adam(use_distributed_optimizer=True, bf16=True), BF16,
                                       DDPConfig(use_distributed_optimizer=True), dp2, qk_clip_tau=TAU)),
        "muon_bf16/layer_wise": strip(train(muon(use_layer_wise_distributed_optimizer=True, bf16=True), BF16, DDPConfig(), dp2,
                                            qk_clip_tau=TAU)),
        "sgd_fp32/tp2": strip(train(sgd(), GQA, DDPConfig(), tp2, qk_clip_tau=TAU)),
        "sgd_fp32/pp2": strip(train(sgd(), GQA_UNTIED, DDPConfig(), pp2, qk_clip_tau=TAU)),
    }
    if rank == 0:
        res["adam_bf16/ref"] = strip(train(adam(bf16=True), BF16, DDPConfig(), single, qk_clip_tau=TAU))
        res["muon_bf16/ref"] = strip(train(muon(bf16=True), BF16, DDPConfig(), single, qk_clip_tau=TAU))
        res["sgd_fp32/ref"] = strip(train(sgd(), GQA, DDPConfig(), single, qk_clip_tau=TAU))
        res["sgd_fp32/unclipped"] = strip(train(sgd(), GQA, DDPConfig(), single))
        res["sgd_fp32/ref_untied"] = strip(train(sgd(), GQA_UNTIED, DDPConfig(), single, qk_clip_tau=TAU))
    torch.save(res, os.path.join(args.out, f"qk_rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
