"""Process groups for tensor, pipeline and data parallelism, and the few collectives the library uses.

A group of ``None`` means "just this process": every helper here treats it as size 1 and does no
communication, so the whole library runs in a single process with nothing initialised.
Rank order follows Megatron-LM: tensor-parallel ranks are adjacent, then data, then pipeline:
``rank = pp_rank * (dp * tp) + dp_rank * tp + tp_rank``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

from megatron_opt.errors import ConfigError

ProcessGroup = Optional[dist.ProcessGroup]


@dataclass
class ProcessGroupCollection:
    """Every group a rank belongs to. ``None`` = size 1 (no communication)."""

    tp: ProcessGroup = None
    pp: ProcessGroup = None
    dp: ProcessGroup = None
    mp: ProcessGroup = None
    """Tensor × pipeline: the model-parallel group over which gradient norms are reduced."""
    embd: ProcessGroup = None
    """First and last pipeline stage (tied input/output embeddings)."""
    world: ProcessGroup = None
    tp_size: int = 1
    pp_size: int = 1
    dp_size: int = 1
    tp_rank: int = 0
    pp_rank: int = 0
    dp_rank: int = 0
    pp_ranks: List[int] = field(default_factory=lambda: [0])
    """Global ranks of this rank's pipeline, stage 0 first (for point-to-point send/recv)."""

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @classmethod
    def single_process(cls) -> "ProcessGroupCollection":
        return cls()

    @classmethod
    def initialize(cls, tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1) -> "ProcessGroupCollection":
        """Create every group from an initialised ``torch.distributed`` (a collective on all ranks)."""
        if not dist.is_available() or not dist.is_initialized():
            if tensor_model_parallel_size == 1 and pipeline_model_parallel_size == 1:
                return cls.single_process()
            raise ConfigError(
                f"tensor_model_parallel_size={tensor_model_parallel_size}, pipeline_model_parallel_size={pipeline_model_parallel_size} "
                "is not allowed without torch.distributed; expected a launch under torchrun"
            )
        world_size = dist.get_world_size()
        rank = dist.get_rank()
        layout = RankLayout.create(world_size, tensor_model_parallel_size, pipeline_model_parallel_size)
        tp_rank, dp_rank, pp_rank = layout.coordinates(rank)
        pgs = cls(
            world=dist.group.WORLD,
            tp_size=layout.tp,
            pp_size=layout.pp,
            dp_size=layout.dp,
            tp_rank=tp_rank,
            dp_rank=dp_rank,
            pp_rank=pp_rank,
            pp_ranks=layout.pp_group_of(rank),
        )
        # new_group is collective: every rank creates every group, in the same order.
        for ranks in layout.all_tp_groups():
            g = dist.new_group(ranks)
            if rank in ranks:
                pgs.tp = g
        for ranks in layout.all_dp_groups():
            g = dist.new_group(ranks)
            if rank in ranks:
                pgs.dp = g
        for ranks in layout.all_pp_groups():
            g = dist.new_group(ranks)
            if rank in ranks:
                pgs.pp = g
        for ranks in layout.all_mp_groups():
            g = dist.new_group(ranks)
            if rank in ranks:
                pgs.mp = g
        for ranks in layout.all_embedding_groups():
            g = dist.new_group(ranks)
            if rank in ranks:
                pgs.embd = g
        return pgs


@dataclass(frozen=True)
class RankLayout:
    """Pure arithmetic of Megatron's rank order; no communication, easy to test."""

    world: int
    tp: int
    pp: int

    @property
    def dp(self) -> int:
        return self.world // (self.tp * self.pp)

    @classmethod
    def create(cls, world_size: int, tp: int, pp: int) -> "RankLayout":
        if tp < 1:
            raise ConfigError(f"--tensor-model-parallel-size={tp} is not allowed; expected an integer >= 1")
        if pp < 1:
            raise ConfigError(f"--pipeline-model-parallel-size={pp} is not allowed; expected an integer >= 1")
        if world_size % (tp * pp) != 0:
            raise ConfigError(
                f"world size {world_size} is not allowed with --tensor-model-parallel-size={tp} and "
                f"--pipeline-model-parallel-size={pp}; expected a multiple of tp*pp={tp * pp}"
            )
        return cls(world_size, tp, pp)

    def rank_of(self, tp_rank: int, dp_rank: int, pp_rank: int) -> int:
        return pp_rank * (self.dp * self.tp) + dp_rank * self.tp + tp_rank

    def coordinates(self, rank: int) -> tuple:
        """(tp_rank, dp_rank, pp_rank) of a global rank."""
        return rank % self.tp, (rank // self.tp) % self.dp, rank // (self.tp * self.dp)

    def all_tp_groups(self) -> List[List[int]]:
        return [[self.rank_of(t, d, p) for t in range(self.tp)] for p in range(self.pp) for d in range(self.dp)]

    def all_dp_groups(self) -> List[List[int]]:
        return [[self.rank_of(t, d, p) for d in range(self.dp)] for p in range(self.pp) for t in range(self.tp)]

    def all_pp_groups(self) -> List[List[int]]:
        return [[self.rank_of(t, d, p) for p in range(self.pp)] for d in range(self.dp) for t in range(self.tp)]

    def all_mp_groups(self) -> List[List[int]]:
        return [sorted(self.rank_of(t, d, p) for t in range(self.tp) for p in range(self.pp)) for d in range(self.dp)]

    def all_embedding_groups(self) -> List[List[int]]:
        groups = []
        for ranks in self.all_pp_groups():
            groups.append(sorted({ranks[0], ranks[-1]}))
        return groups

    def pp_group_of(self, rank: int) -> List[int]:
        t, d, _ = self.coordinates(rank)
        return [self.rank_of(t, d, p) for p in range(self.pp)]


# --------------------------------------------------------------------------------------------
# collectives that treat ``None`` as a group of one


def group_size(group: ProcessGroup) -> int:
    if group is None or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def group_rank(group: ProcessGroup) -> int:
    if group is None or not dist.is_initialized():
        return 0
    return dist.get_rank(group)


def all_reduce(tensor: torch.Tensor, group: ProcessGroup, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce; a no-op on a group of one."""
    if group_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def all_gather_concat(tensor: torch.Tensor, group: ProcessGroup, dim: int) -> torch.Tensor:
    """Gather equal-shaped shards from every rank of ``group`` and concatenate them along ``dim``."""
    size = group_size(group)
    if size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def backend_for_device() -> str:
    """NCCL with CUDA, gloo otherwise; chosen once at start-up."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def global_ranks(group: ProcessGroup) -> Sequence[int]:
    if group is None or not dist.is_initialized():
        return [dist.get_rank() if dist.is_initialized() else 0]
    return dist.get_process_group_ranks(group)
