"""Agreeing on a step's skip decision across the ranks that must take it together.

A plain (replicated) optimizer reduces its grad norm over the model-parallel ranks only, so a bad
value that reaches one data-parallel replica after the gradient reduction would skip the step there
and nowhere else; the replicas would silently drift apart. These helpers OR a flag over a group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_opt.parallel import ProcessGroup, all_reduce, group_size


def any_rank(flag: bool, group: ProcessGroup, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank of ``group`` (one 1-element MAX all-reduce)."""
    if group is None or group_size(group) == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float32, device=device)
    return bool(all_reduce(t, group, dist.ReduceOp.MAX).item() > 0)


def any_rank_on_device(flag: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """``any_rank`` for a 0-d bool tensor, without reading it back (a MAX all-reduce on its device)."""
    if group is None or group_size(group) == 1:
        return flag
    t = flag.to(torch.float32).reshape(1)
    return all_reduce(t, group, dist.ReduceOp.MAX).reshape(()) > 0
