"""Pure layout arithmetic for the sharded optimizers: no tensors are moved and nobody talks.

* ``shard_param_ranges``: which piece of which parameter a data-parallel rank owns when every
  bucket of a DDP grad buffer is cut into ``dp`` equal, contiguous shards (parameter boundaries are
  ignored, as in Megatron-LM's ZeRO-1).
* ``lpt_assign``: longest-processing-time-first balancing of whole matrices over ranks, used by the
  layer-wise optimizer with the Newton–Schulz cost ``newton_schulz_cost``.

Every rank evaluates these functions on the same inputs and so reaches the same answer.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import List, Sequence, Tuple

Range = Tuple[int, int]


@dataclass(frozen=True)
class SlotInfo:
    """A parameter's place in a grad buffer: ``buffer[start:end]`` inside bucket ``bucket_index``."""

    name: str
    start: int
    end: int
    bucket_index: int


@dataclass(frozen=True)
class ShardRange:
    """One owned piece of one parameter.

    ``buffer_range``: absolute ``[start, end)`` in the grad buffer; ``bucket_range``: the same range
    relative to the bucket start; ``shard_range``: relative to this rank's shard of the bucket;
    ``param_range``: the sub-range inside the flattened parameter.
    """

    name: str
    bucket_index: int
    buffer_range: Range
    bucket_range: Range
    shard_range: Range
    param_range: Range

    @property
    def numel(self) -> int:
        return self.param_range[1] - self.param_range[0]


def bucket_shard(bucket: Range, dp_rank: int, dp_size: int) -> Range:
    """The absolute buffer range DP rank ``dp_rank`` owns in ``bucket`` (its length is divisible by dp)."""
    start, end = bucket
    if (end - start) % dp_size != 0:
        raise ValueError(f"bucket {bucket} of {end - start} elements is not divisible by the data-parallel size {dp_size}")
    size = (end - start) // dp_size
    return start + dp_rank * size, start + (dp_rank + 1) * size


def shard_param_ranges(slots: Sequence[SlotInfo], buckets: Sequence[Range], dp_rank: int, dp_size: int) -> List[ShardRange]:
    """Owned pieces of every parameter for one rank, in slot order; empty intersections are left out."""
    out: List[ShardRange] = []
    for slot in slots:
        bucket_start, _ = buckets[slot.bucket_index]
        own_start, own_end = bucket_shard(buckets[slot.bucket_index], dp_rank, dp_size)
        start, end = max(slot.start, own_start), min(slot.end, own_end)
        if start >= end:
            continue
        out.append(
            ShardRange(
                name=slot.name,
                bucket_index=slot.bucket_index,
                buffer_range=(start, end),
                bucket_range=(start - bucket_start, end - bucket_start),
                shard_range=(start - own_start, end - own_start),
                param_range=(start - slot.start, end - slot.start),
            )
        )
    return out


def newton_schulz_cost(shape: Sequence[int]) -> int:
    """Work of one Newton–Schulz iteration on a matrix: ``max(m, n) · min(m, n)²``.

    Anything that is not 2-D is costed by its element count (it is not orthogonalized).
    """
    if len(shape) == 2:
        m, n = int(shape[0]), int(shape[1])
        return max(m, n) * min(m, n) ** 2
    numel = 1
    for s in shape:
        numel *= int(s)
    return numel


def lpt_assign(costs: Sequence[int], num_bins: int) -> List[int]:
    """Longest processing time first: item ``i`` goes to ``owners[i]``.

    Items are taken largest cost first (equal costs: lower index first) and each goes to the bin with
    the least load so far (equal loads: lower bin index). Deterministic, so every rank agrees.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins={num_bins}; expected at least 1")
    owners = [0] * len(costs)
    heap = [(0, b) for b in range(num_bins)]
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    for i in order:
        load, b = heapq.heappop(heap)
        owners[i] = b
        heapq.heappush(heap, (load + costs[i], b))
    return owners


def bin_loads(costs: Sequence[int], owners: Sequence[int], num_bins: int) -> List[int]:
    loads = [0] * num_bins
    for c, b in zip(costs, owners):
        loads[b] += c
    return loads
