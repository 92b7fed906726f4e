"""torchrun worker for the parallel-equivalence tests.

``--suite two`` (2 ranks): TP=2, PP=2 and DP=2 runs, each followed on rank 0 by the same
computation in a single process (TP=PP=DP=1, no communication) as the reference.
``--suite four`` (4 ranks): TP=2 × PP=2 trains a few steps of plain SGD; rank 0 repeats it in one process.
Every rank writes ``<out>/<suite>_rank<r>.pt``; the pytest side compares the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import os
from typing import Dict, List

import torch
import torch.distributed as dist

from megatron_opt.distributed import DDPConfig, DistributedDataParallel
from megatron_opt.parallel import ProcessGroupCollection, all_gather_concat
from training.data import BatchLayout, DataConfig, build_datasets, microbatches_at
from training.model import GPT, GPTConfig
from training.pipeline import forward_backward

SEQ = 16
TP_CONFIGS = {
    "gqa_tied_layernorm": GPTConfig(hidden_size=32, num_layers=2, num_attention_heads=4, num_query_groups=2, seq_length=SEQ),
    "mha_untied_rmsnorm": GPTConfig(hidden_size=32, num_layers=2, num_attention_heads=4, seq_length=SEQ,
                                    normalization="RMSNorm", tie_embeddings=False),
}
PP_CONFIG = GPTConfig(hidden_size=32, num_layers=4, num_attention_heads=4, num_query_groups=2, seq_length=SEQ)
DP_CONFIG = GPTConfig(hidden_size=32, num_layers=2, num_attention_heads=4, seq_length=SEQ)
DP_VARIANTS = {
    "allreduce": DDPConfig(),
    "overlap_buckets": DDPConfig(overlap_grad_reduce=True, bucket_size=2000),
    "reduce_scatter_overlap": DDPConfig(overlap_grad_reduce=True, bucket_size=2000, use_distributed_optimizer=True),
}


def random_microbatches(n: int, micro_batch_size: int = 2, seed: int = 7) -> List[tuple]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (micro_batch_size, SEQ), generator=g), torch.randint(0, 256, (micro_batch_size, SEQ), generator=g))
            for _ in range(n)]


def train_data():
    train, _ = build_datasets(DataConfig(seq_length=SEQ), vocab_size=256)
    return train


def local_grads(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {n: (p.main_grad if hasattr(p, "main_grad") else p.grad).detach().clone() for n, p in model.named_parameters()}


def full_grads(model: torch.nn.Module, pgs: ProcessGroupCollection) -> Dict[str, torch.Tensor]:
    """Gradients with tensor-parallel shards gathered along each parameter's partition_dim."""
    out = {}
    for name, g in local_grads(model).items():
        p = dict(model.named_parameters())[name]
        out[name] = all_gather_concat(g, pgs.tp, p.partition_dim) if p.tensor_model_parallel else g
    return out


def single_process_reference(config: GPTConfig, microbatches) -> dict:
    model = GPT(config)
    result = forward_backward(model, microbatches, ProcessGroupCollection.single_process())
    return {"loss": result.loss, "grads": local_grads(model)}


def suite_two(rank: int) -> dict:
    results: dict = {}

    # (a) TP=2 vs TP=1, two model variants, two micro-batches each
    pgs = ProcessGroupCollection.initialize(2, 1)
    batches = random_microbatches(2)
    for key, config in TP_CONFIGS.items():
        model = DistributedDataParallel(GPT(config, pgs), DDPConfig(), pgs)
        result = forward_backward(model, batches, pgs)
        results[f"tp/{key}"] = {"loss": result.loss, "grads": full_grads(model, pgs)}
        if rank == 0:
            results[f"tp/{key}/ref"] = single_process_reference(config, batches)

    # (b) PP=2 with 4 micro-batches vs PP=1
    pgs = ProcessGroupCollection.initialize(1, 2)
    batches = random_microbatches(4, seed=11)
    model = DistributedDataParallel(GPT(PP_CONFIG, pgs), DDPConfig(), pgs)
    result = forward_backward(model, batches, pgs)
    results["pp"] = {"loss": result.loss, "grads": local_grads(model), "pp_rank": pgs.pp_rank,
                     "shared": [n for n, p in model.named_parameters() if p.shared]}
    if rank == 0:
        results["pp/ref"] = single_process_reference(PP_CONFIG, batches)

    # (c) DP=2 vs DP=1 on the same global batch of real text, 2 micro-batches per rank
    pgs = ProcessGroupCollection.initialize(1, 1)
    data = train_data()
    dp_batches = microbatches_at(data, BatchLayout(micro_batch_size=2, num_microbatches=2, dp_size=2, dp_rank=pgs.dp_rank), 0)
    for key, ddp_config in DP_VARIANTS.items():
        model = DistributedDataParallel(GPT(DP_CONFIG, pgs), ddp_config, pgs)
        for _ in range(2):  # the second iteration checks that zero_grad_buffer resets everything
            model.zero_grad_buffer()
            result = forward_backward(model, dp_batches, pgs)
        buffer = model.buffers[0]
        owned = []
        for bucket in buffer.buckets:
            start, end = bucket.shard_range(pgs.dp_rank, pgs.dp_size)
            owned.append((start, end))
        results[f"dp/{key}"] = {
            "loss": result.loss,
            "grads": local_grads(model),
            "buffer": buffer.data.clone(),
            "slots": {slot.name: (slot.start, slot.end) for slot in buffer.param_index_map.values()},
            "owned": owned,
            "num_buckets": len(buffer.buckets),
        }
    if rank == 0:
        ref_batches = microbatches_at(data, BatchLayout(micro_batch_size=2, num_microbatches=4), 0)
        model = DistributedDataParallel(GPT(DP_CONFIG), DDPConfig())
        result = forward_backward(model, ref_batches, ProcessGroupCollection.single_process())
        results["dp/ref"] = {"loss": result.loss, "grads": local_grads(model)}
    return results


def sgd_steps(model, pgs: ProcessGroupCollection, data, steps: int, lr: float) -> List[float]:
    layout = BatchLayout(micro_batch_size=2, num_microbatches=2, dp_size=pgs.dp_size, dp_rank=pgs.dp_rank)
    losses = []
    for step in range(steps):
        model.zero_grad_buffer()
        losses.append(forward_backward(model, microbatches_at(data, layout, step * layout.global_batch_size), pgs).loss)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.main_grad, alpha=-lr)
    return losses


def suite_four(rank: int, steps: int = 6, lr: float = 0.1) -> dict:
    config = GPTConfig(hidden_size=32, num_layers=4, num_attention_heads=4, num_query_groups=2, seq_length=SEQ)
    data = train_data()
    pgs = ProcessGroupCollection.initialize(2, 2)
    model = DistributedDataParallel(GPT(config, pgs), DDPConfig(bucket_size=3000, overlap_grad_reduce=True), pgs)
    results = {"losses": sgd_steps(model, pgs, data, steps, lr), "pp_rank": pgs.pp_rank, "tp_rank": pgs.tp_rank}
    word = model.module.embedding.word_embeddings.weight if model.module.embedding is not None else None
    results["word_embeddings"] = all_gather_concat(word.detach(), pgs.tp, 0) if word is not None else None
    if rank == 0:
        single = ProcessGroupCollection.single_process()
        ref = DistributedDataParallel(GPT(config), DDPConfig())
        results["ref_losses"] = sgd_steps(ref, single, data, steps, lr)
        results["ref_word_embeddings"] = ref.module.embedding.word_embeddings.weight.detach().clone()
    return results


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
