"""Tensor-parallel building blocks: the autograd collectives, sharded layers and a vocab-parallel loss.

Layers take the full initial weight and the tensor-parallel coordinate ``(tp_rank, tp_size)``
explicitly (the group is only used to communicate), so shards can be built and checked in one process.
Every sharded parameter describes itself (``tensor_model_parallel``, ``partition_dim``,
``partition_stride``) so the optimizer library can gather or split it without guessing.
Weights are initialised from the FULL tensor (seeded by ``(seed, name)``) and then sliced, so a
parameter has the same values whatever the tensor-parallel size.
"""

from __future__ import annotations

import zlib
from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from megatron_opt.parallel import ProcessGroup, group_rank, group_size

# --------------------------------------------------------------------------------------------
# deterministic initialisation, independent of the parallel layout


def full_init_normal(seed: int, name: str, shape: Tuple[int, ...], std: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The full (unsharded) weight called ``name``: N(0, std²) from a generator seeded by (seed, name)."""
    generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**62))
    return (torch.randn(shape, generator=generator, dtype=torch.float32) * std).to(dtype)


def shard_of(full: torch.Tensor, partition_dim: int, tp_rank: int, tp_size: int) -> torch.Tensor:
    """The contiguous slice tensor-parallel rank ``tp_rank`` holds (a copy)."""
    if full.shape[partition_dim] % tp_size != 0:
        raise ValueError(f"dimension {partition_dim} of size {full.shape[partition_dim]} is not divisible by tp_size={tp_size}")
    return full.chunk(tp_size, dim=partition_dim)[tp_rank].clone()


def mark_tensor_parallel(param: nn.Parameter, partition_dim: int) -> None:
    param.tensor_model_parallel = True
    param.partition_dim = partition_dim
    param.partition_stride = 1


def mark_replicated(param: nn.Parameter) -> None:
    """A parameter every tensor-parallel rank holds in full (its grads are equal on all of them)."""
    param.tensor_model_parallel = False
    param.partition_dim = -1
    param.partition_stride = 1


# --------------------------------------------------------------------------------------------
# autograd collectives


class _CopyToTensorParallel(torch.autograd.Function):
    """Identity forward; all-reduce of the input gradient backward (input feeds every shard)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        if group_size(ctx.group) > 1:
            dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTensorParallel(torch.autograd.Function):
    """All-reduce forward (partial sums → full); identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
        x = x.contiguous()
        if group_size(group) > 1:
            dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def copy_to_tensor_parallel_region(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    return _CopyToTensorParallel.apply(x, group) if group_size(group) > 1 else x


def reduce_from_tensor_parallel_region(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    return _ReduceFromTensorParallel.apply(x, group) if group_size(group) > 1 else x


# --------------------------------------------------------------------------------------------
# layers


class VocabParallelEmbedding(nn.Module):
    """Embedding whose rows (the vocabulary) are split across tensor-parallel ranks."""

    def __init__(self, full_weight: torch.Tensor, tp_group: ProcessGroup, tp_rank: int, tp_size: int):
        super().__init__()
        num_embeddings = full_weight.shape[0]
        self.tp_group = tp_group
        self.vocab_start = tp_rank * num_embeddings // tp_size
        self.vocab_end = (tp_rank + 1) * num_embeddings // tp_size
        self.weight = nn.Parameter(shard_of(full_weight, 0, tp_rank, tp_size))
        mark_tensor_parallel(self.weight, partition_dim=0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if group_size(self.tp_group) == 1:
            return F.embedding(tokens, self.weight)
        outside = (tokens < self.vocab_start) | (tokens >= self.vocab_end)
        local = (tokens - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tensor_parallel_region(out, self.tp_group)


class ColumnParallelLinear(nn.Module):
    """y = x Wᵀ + b with W split by output rows; the output stays sharded (no gather)."""

    def __init__(self, full_weight: torch.Tensor, bias: bool, tp_group: ProcessGroup, tp_rank: int, tp_size: int):
        super().__init__()
        self.tp_group = tp_group
        self.weight = nn.Parameter(shard_of(full_weight, 0, tp_rank, tp_size))
        mark_tensor_parallel(self.weight, partition_dim=0)
        if bias:
            self.bias = nn.Parameter(torch.zeros(full_weight.shape[0] // tp_size, dtype=full_weight.dtype))
            mark_tensor_parallel(self.bias, partition_dim=0)
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(copy_to_tensor_parallel_region(x, self.tp_group), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = x Wᵀ + b with W split by input columns; input arrives sharded, partial sums are all-reduced."""

    def __init__(self, full_weight: torch.Tensor, bias: bool, tp_group: ProcessGroup, tp_rank: int, tp_size: int):
        super().__init__()
        self.tp_group = tp_group
        self.weight = nn.Parameter(shard_of(full_weight, 1, tp_rank, tp_size))
        mark_tensor_parallel(self.weight, partition_dim=1)
        if bias:
            self.bias = nn.Parameter(torch.zeros(full_weight.shape[0], dtype=full_weight.dtype))
            mark_replicated(self.bias)
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = reduce_from_tensor_parallel_region(F.linear(x, self.weight), self.tp_group)
        return out + self.bias if self.bias is not None else out


# --------------------------------------------------------------------------------------------
# loss


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Exact cross entropy over logits whose last dim (the vocabulary) is split across ranks."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, vocab_start: int, group: ProcessGroup):
        ctx.logits_dtype = logits.dtype
        logits = logits.float()
        logits_max = logits.max(dim=-1).values
        if group_size(group) > 1:
            dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - logits_max.unsqueeze(-1)

        local_vocab = logits.shape[-1]
        outside = (target < vocab_start) | (target >= vocab_start + local_vocab)
        local_target = (target - vocab_start).masked_fill(outside, 0)
        predicted = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)

        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        if group_size(group) > 1:
            both = torch.stack([predicted, sum_exp])
            dist.all_reduce(both, group=group)
            predicted, sum_exp = both[0], both[1]
        loss = sum_exp.log() - predicted

        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local_target, outside)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        softmax, local_target, outside = ctx.saved_tensors
        grad = softmax.clone()
        onehot = F.one_hot(local_target, grad.shape[-1]).to(grad.dtype) * (~outside).unsqueeze(-1).to(grad.dtype)
        grad.sub_(onehot).mul_(grad_loss.unsqueeze(-1))
        return grad.to(ctx.logits_dtype), None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, tp_group: ProcessGroup) -> torch.Tensor:
    """Per-token loss (same shape as ``target``) from vocab-sharded ``logits``."""
    vocab_start = group_rank(tp_group) * logits.shape[-1]
    return _VocabParallelCrossEntropy.apply(logits, target, vocab_start, tp_group)


def parallel_lm_logits(hidden: torch.Tensor, word_embeddings_weight: torch.Tensor, tp_group: ProcessGroup,
                       bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Vocab-sharded logits; the input gradient is all-reduced over the tensor-parallel group."""
    return F.linear(copy_to_tensor_parallel_region(hidden, tp_group), word_embeddings_weight, bias)
