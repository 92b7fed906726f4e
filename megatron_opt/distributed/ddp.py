"""Data parallelism over contiguous gradient buffers.

Every trainable parameter gets ``param.main_grad``: a view into one flat fp32 buffer per parameter
dtype. Parameters are laid out in reverse order (the order backward produces their gradients) and
the buffer is cut into buckets, each padded to a multiple of the data-parallel size so it can be
reduce-scattered into equal shards. The layout (``buffers[i].param_index_map``, ``.buckets``) is
plain data so the distributed optimizer can find its shard of every bucket without talking.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from megatron_opt.errors import config_error
from megatron_opt.parallel import ProcessGroupCollection, group_rank, group_size


@dataclass
class DDPConfig:
    grad_reduce_in_fp32: bool = True
    """Accumulate and reduce gradients in fp32 whatever the parameter dtype."""
    overlap_grad_reduce: bool = False
    """Start each bucket's collective as soon as its gradients are ready in the last micro-batch's backward."""
    bucket_size: Optional[int] = None
    """Elements per bucket (a bucket closes once it holds at least this many); None = one bucket per buffer."""
    average_in_collective: bool = False
    """Average with ReduceOp.AVG inside the collective (NCCL) instead of pre-dividing by the DP size."""
    use_distributed_optimizer: bool = False
    """Reduce-scatter buckets (each DP rank keeps only its 1/dp shard reduced) instead of all-reducing."""

    def __post_init__(self) -> None:
        if self.bucket_size is not None and self.bucket_size < 1:
            raise config_error("bucket_size", self.bucket_size, "None or a positive number of elements")


@dataclass(frozen=True)
class ParamSlot:
    """Where one parameter's gradient lives: ``buffer.data[start:end]``, inside bucket ``bucket_index``."""

    name: str
    start: int
    end: int
    bucket_index: int


@dataclass
class Bucket:
    """A contiguous range ``[start, end)`` of a grad buffer; ``end - start`` is a multiple of the DP size."""

    index: int
    start: int
    end: int
    params: List[nn.Parameter] = field(default_factory=list)
    param_names: List[str] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return self.end - self.start

    def shard_range(self, dp_rank: int, dp_size: int) -> tuple:
        """Buffer range ``[start, end)`` that DP rank ``dp_rank`` owns after a reduce-scatter."""
        shard = self.numel // dp_size
        return self.start + dp_rank * shard, self.start + (dp_rank + 1) * shard


def plan_buckets(numels: List[int], bucket_size: Optional[int], dp_size: int) -> tuple:
    """Pure layout arithmetic: parameter offsets and bucket ranges, in the given (backward) order.

    Returns ``(param_ranges, bucket_ranges)`` where ``param_ranges[i] = (start, end, bucket_index)`` and
    ``bucket_ranges[j] = (start, end)``; each bucket's end is padded up to a multiple of ``dp_size``
    (relative to its start), so padding lies between buckets.
    """
    param_ranges, bucket_ranges = [], []
    offset = bucket_start = 0
    for i, n in enumerate(numels):
        param_ranges.append((offset, offset + n, len(bucket_ranges)))
        offset += n
        is_last = i == len(numels) - 1
        if is_last or (bucket_size is not None and offset - bucket_start >= bucket_size):
            padded = -(-(offset - bucket_start) // dp_size) * dp_size
            bucket_ranges.append((bucket_start, bucket_start + padded))
            offset = bucket_start = bucket_start + padded
    return param_ranges, bucket_ranges


class GradBuffer:
    """One flat gradient buffer for all parameters of one dtype, cut into buckets."""

    def __init__(self, params: List[nn.Parameter], names: List[str], param_dtype: torch.dtype, grad_dtype: torch.dtype,
                 bucket_size: Optional[int], dp_size: int, device: torch.device):
        self.param_dtype = param_dtype
        self.grad_dtype = grad_dtype
        self.params = params
        param_ranges, bucket_ranges = plan_buckets([p.numel() for p in params], bucket_size, dp_size)
        total = bucket_ranges[-1][1] if bucket_ranges else 0
        self.data = torch.zeros(total, dtype=grad_dtype, device=device)
        self.buckets = [Bucket(j, s, e) for j, (s, e) in enumerate(bucket_ranges)]
        self.param_index_map: Dict[nn.Parameter, ParamSlot] = {}
        for p, name, (start, end, b) in zip(params, names, param_ranges):
            self.param_index_map[p] = ParamSlot(name, start, end, b)
            self.buckets[b].params.append(p)
            self.buckets[b].param_names.append(name)
            p.main_grad = self.data[start:end].view(p.shape)

    def bucket_data(self, bucket: Bucket) -> torch.Tensor:
        return self.data[bucket.start:bucket.end]


@dataclass
class _PendingReduce:
    work: Optional[dist.Work]
    finish: Optional[Callable[[], None]] = None


class DistributedDataParallel(nn.Module):
    """Wraps a model chunk; gradients accumulate into contiguous buffers and are averaged over ``pgs.dp``.

    The wrapper is transparent for names: ``named_parameters()`` and ``state_dict()`` are those of
    the wrapped module (no ``module.`` prefix), because names are a parameter's identity.
    """

    def __init__(self, module: nn.Module, config: DDPConfig, pgs: Optional[ProcessGroupCollection] = None):
        super().__init__()
        self.module = module
        self.config = config
        self.pgs = pgs or ProcessGroupCollection.single_process()
        self.dp_group = self.pgs.dp
        self.dp_size = group_size(self.dp_group)
        self.dp_rank = group_rank(self.dp_group)
        self._sync_enabled = True
        self._pending: Dict[tuple, _PendingReduce] = {}
        self._ready: Dict[tuple, int] = {}
        self._use_avg_op = config.average_in_collective and self.dp_size > 1 and dist.get_backend(self.dp_group) == "nccl"
        self._reduce_scatter_ok = config.use_distributed_optimizer and self.dp_size > 1 and _reduce_scatter_available(self.dp_group)

        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        named.reverse()  # backward order
        by_dtype: Dict[torch.dtype, List[tuple]] = {}
        for n, p in named:
            by_dtype.setdefault(p.dtype, []).append((n, p))
        self.buffers: List[GradBuffer] = []
        self._param_location: Dict[nn.Parameter, tuple] = {}
        for dtype, items in by_dtype.items():
            grad_dtype = torch.float32 if config.grad_reduce_in_fp32 else dtype
            buffer = GradBuffer([p for _, p in items], [n for n, _ in items], dtype, grad_dtype,
                                config.bucket_size, self.dp_size, items[0][1].device)
            for p in buffer.params:
                self._param_location[p] = (len(self.buffers), buffer.param_index_map[p].bucket_index)
            self.buffers.append(buffer)
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad_ready) for p in self._param_location]

    # ---------------------------------------------------------------- nn.Module transparency
    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True) -> Iterator:
        return self.module.named_parameters(prefix=prefix, recurse=recurse, remove_duplicate=remove_duplicate)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    # ---------------------------------------------------------------- gradient accumulation
    def _on_grad_ready(self, param: nn.Parameter) -> None:
        param.main_grad.add_(param.grad)
        param.grad = None
        if not (self.config.overlap_grad_reduce and self._sync_enabled):
            return
        key = self._param_location[param]
        if key in self._pending:
            raise RuntimeError(
                f"a gradient of bucket {key} arrived after its reduction started; with overlap_grad_reduce=True run all "
                "micro-batches but the last inside no_sync()")
        self._ready[key] = self._ready.get(key, 0) + 1
        buffer_index, bucket_index = key
        if self._ready[key] == len(self.buffers[buffer_index].buckets[bucket_index].params):
            self._start_bucket_reduce(key)

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients without communicating (all micro-batches but the last)."""
        self._sync_enabled = False
        try:
            yield
        finally:
            self._sync_enabled = True

    # ---------------------------------------------------------------- communication
    def _start_bucket_reduce(self, key: tuple) -> None:
        if key in self._pending:
            return
        buffer_index, bucket_index = key
        buffer = self.buffers[buffer_index]
        bucket = buffer.buckets[bucket_index]
        data = buffer.bucket_data(bucket)
        async_op = self.config.overlap_grad_reduce
        if self.dp_size == 1:
            self._pending[key] = _PendingReduce(None)
            return
        op = dist.ReduceOp.SUM
        if self._use_avg_op:
            op = dist.ReduceOp.AVG
        else:
            data.div_(self.dp_size)
        if self._reduce_scatter_ok:
            start, end = bucket.shard_range(self.dp_rank, self.dp_size)
            own = buffer.data[start:end]
            received = torch.empty_like(own)
            work = dist.reduce_scatter_tensor(received, data, op=op, group=self.dp_group, async_op=async_op)
            self._pending[key] = _PendingReduce(work, finish=lambda: own.copy_(received))
        else:
            work = dist.all_reduce(data, op=op, group=self.dp_group, async_op=async_op)
            self._pending[key] = _PendingReduce(work)

    def start_grad_sync(self) -> None:
        """Launch the collective of every bucket not launched yet."""
        for b_i, buffer in enumerate(self.buffers):
            for bucket in buffer.buckets:
                self._start_bucket_reduce((b_i, bucket.index))

    def finish_grad_sync(self) -> None:
        """Complete every bucket's reduction: afterwards ``main_grad`` holds the DP mean.

        With ``use_distributed_optimizer`` only this rank's shard of each bucket (``Bucket.shard_range``)
        is guaranteed to be reduced.
        """
        self.start_grad_sync()
        for pending in self._pending.values():
            if pending.work is not None:
                pending.work.wait()
            if pending.finish is not None:
                pending.finish()
        self._pending.clear()
        self._ready.clear()

    def zero_grad_buffer(self) -> None:
        for buffer in self.buffers:
            buffer.data.zero_()
        for p in self._param_location:
            p.grad = None
        self._pending.clear()
        self._ready.clear()

    def start_param_sync(self, force_sync: bool = False) -> None:
        """Hook point for the distributed optimizer's parameter all-gather; plain DDP has nothing to do."""

    def broadcast_params(self) -> None:
        """Make every DP replica start from DP rank 0's parameters."""
        if self.dp_size == 1:
            return
        src = dist.get_global_rank(self.dp_group, 0)
        for p in self.module.parameters():
            dist.broadcast(p.data, src=src, group=self.dp_group)


_REDUCE_SCATTER_SUPPORT: Dict[int, bool] = {}


def _reduce_scatter_available(group) -> bool:
    """Whether this backend supports reduce_scatter_tensor; probed once per group (collectively) at start-up."""
    key = id(group)
    if key not in _REDUCE_SCATTER_SUPPORT:
        size = group_size(group)
        probe_in = torch.ones(size, device=_group_device(group))
        probe_out = torch.zeros(1, device=probe_in.device)
        try:
            dist.reduce_scatter_tensor(probe_out, probe_in, group=group)
            _REDUCE_SCATTER_SUPPORT[key] = bool(probe_out.item() == size)
        except (RuntimeError, NotImplementedError):
            _REDUCE_SCATTER_SUPPORT[key] = False
    return _REDUCE_SCATTER_SUPPORT[key]


def _group_device(group) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
