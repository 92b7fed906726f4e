"""Global gradient norm, clipping and zero counting over model-parallel shards.

Every rank computes a partial statistic over the gradients it owns and the partials are reduced
over a process group. Which gradients a rank "owns" is decided by two filters: tied-weight copies
(``param.shared``) are left out, and so are replicated (non tensor-parallel) parameters on every
tensor-parallel rank but the first; otherwise they would be counted once per rank.

``grad_norm_power_fp32`` returns the reduced ``Σ|g|^p`` (or the max for the inf-norm) so that a
container whose children reduce over different groups can still combine them into one norm.
"""

from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Union

import torch
import torch.distributed as dist

from megatron_opt.parallel import ProcessGroup, all_reduce, default_device, group_rank, group_size

Grads = Union[torch.Tensor, Iterable[Optional[torch.Tensor]]]

CLIP_EPSILON = 1e-6
"""Added to the norm before dividing, as in Megatron-LM and torch.nn.utils.clip_grad_norm_."""


def param_is_not_shared(param: torch.Tensor) -> bool:
    """False for the tied-weight copy (``shared``) whose gradient is already counted elsewhere."""
    return not getattr(param, "shared", False)


def param_is_not_tensor_parallel_duplicate(param: torch.Tensor, tp_group: ProcessGroup = None) -> bool:
    """True for tensor-parallel shards everywhere, and for replicated parameters on TP rank 0 only."""
    return bool(getattr(param, "tensor_model_parallel", False)) or group_rank(tp_group) == 0


def _as_list(grads: Grads) -> List[torch.Tensor]:
    if isinstance(grads, torch.Tensor):
        return [grads]
    return [g for g in grads if g is not None]


def _stat_device(grads: Sequence[torch.Tensor]) -> torch.device:
    # A rank without gradients still has to join the collective, on the backend's device.
    return grads[0].device if grads else default_device()


def grad_norm_power_fp32(grads: Grads, norm_type: float = 2.0, group: ProcessGroup = None) -> float:
    """``Σ ‖g‖_p^p`` over ``grads`` summed over ``group`` (for p = inf: the max, reduced with MAX)."""
    grads = _as_list(grads)
    norm_type = float(norm_type)
    device = _stat_device(grads)
    local = torch.zeros(1, dtype=torch.float32, device=device)
    if grads:
        per_tensor = torch.stack([n.float() for n in torch._foreach_norm(grads, norm_type)])
        if math.isinf(norm_type):
            local += per_tensor.max()
        else:
            local += per_tensor.pow(norm_type).sum()
    op = dist.ReduceOp.MAX if math.isinf(norm_type) else dist.ReduceOp.SUM
    all_reduce(local, group, op)
    return float(local.item())


def norm_from_powers(powers: Iterable[float], norm_type: float = 2.0) -> float:
    """Combine partial results of ``grad_norm_power_fp32`` into one norm."""
    powers = list(powers)
    if math.isinf(float(norm_type)):
        return max(powers, default=0.0)
    return math.fsum(powers) ** (1.0 / float(norm_type))


def get_grad_norm_fp32(grads: Grads, norm_type: float = 2.0, group: ProcessGroup = None) -> float:
    """The p-norm of all gradients on all ranks of ``group`` (callers pass already-filtered grads).

    Computed in fp32 as ``torch.nn.utils.get_total_norm`` does (the norm of the per-tensor norms),
    and across ranks as the norm of the per-rank norms, so a single process matches torch bitwise.
    """
    return float(grad_norm_fp32_tensor(grads, norm_type, group).item())


def grad_norm_fp32_tensor(grads: Grads, norm_type: float = 2.0, group: ProcessGroup = None) -> torch.Tensor:
    """``get_grad_norm_fp32`` as a 0-d fp32 tensor on the grads' device (no host read)."""
    grads = _as_list(grads)
    norm_type = float(norm_type)
    device = _stat_device(grads)
    if grads:
        local = torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads, norm_type)]), norm_type)
    else:
        local = torch.zeros((), dtype=torch.float32, device=device)
    if group_size(group) > 1:
        per_rank = [torch.empty_like(local) for _ in range(group_size(group))]
        dist.all_gather(per_rank, local, group=group)
        local = torch.linalg.vector_norm(torch.stack(per_rank), norm_type)
    return local


def clip_grad_by_total_norm_fp32(grads: Grads, max_norm: float, total_norm: float) -> None:
    """Scale ``grads`` in place by ``max_norm / (total_norm + 1e-6)`` when that is below 1.

    The coefficient is formed in fp32 exactly as ``torch.nn.utils.clip_grad_norm_`` forms it.
    """
    grads = _as_list(grads)
    clip_coeff = (float(max_norm) / (torch.tensor(float(total_norm), dtype=torch.float32) + CLIP_EPSILON)).item()
    if grads and clip_coeff < 1.0:
        torch._foreach_mul_(grads, clip_coeff)


def clip_grad_by_total_norm_tensor(grads: Grads, max_norm: float, total_norm: torch.Tensor) -> None:
    """``clip_grad_by_total_norm_fp32`` with the norm as a tensor: the same fp32 coefficient, capped at 1
    on device (multiplying by exactly 1.0 changes nothing), so no host read."""
    grads = _as_list(grads)
    if not grads:
        return
    clip_coeff = (float(max_norm) / (total_norm.to(torch.float32) + CLIP_EPSILON)).clamp(max=1.0)
    torch._foreach_mul_(grads, clip_coeff.to(grads[0].device))


def count_zeros_fp32(grads: Grads, group: ProcessGroup = None) -> float:
    """Number of exactly-zero gradient entries, summed over ``group``."""
    grads = _as_list(grads)
    total = torch.zeros(1, dtype=torch.float64, device=_stat_device(grads))
    for g in grads:
        total += g.numel() - torch.count_nonzero(g)
    all_reduce(total, group, dist.ReduceOp.SUM)
    return float(total.item())
