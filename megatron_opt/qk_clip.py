"""QK-clip (the MuonClip idea of Kimi K2): bound the attention logits by rescaling W_q and W_k after a step.

For every attention head h the model records ``S_h``, the largest pre-softmax logit
``q_i·k_j / sqrt(d)`` it computed during the forward passes of this step (causal positions only, max
over all micro-batches). After the optimizer step, with threshold τ and split α (0 < α < 1):

    ratio_h  = τ / S_h  if S_h > τ  else 1
    q rows of head h        × ratio_h ** α
    k rows of query group g × (min over the heads h of g of ratio_h) ** (1 − α)
    v rows                  untouched

so the new logit bound of head h is ``S_h · ratio_h^α · ratio_g^(1−α) <= τ`` (``ratio_g <= ratio_h``),
with equality for the head that holds the group's maximum. α = 0.5 scales q and k by sqrt(τ/S) each.
Choices worth knowing:

* **GQA**: a key head is shared by the query heads of its group, so k is scaled with the group's
  largest logit (the smallest ratio) and each q with its own. A head under τ keeps its q rows; its
  k rows change only when another head of the same group was clipped (bitwise untouched otherwise,
  since a factor of exactly 1.0 is used).
* **Bias**: the fused QKV bias rows are scaled with the weight rows, so ``q = W x + b`` scales
  exactly and the logit bound holds for a layer with a bias too.
* **Layout** is read from the weight, never guessed: ``is_qkv`` and ``qkv_split_shapes =
  (heads_per_group·d, d, d)`` (rows grouped per query group as ``[q_1..q_h, k, v]``, Megatron's
  fused layout). With tensor parallelism every rank holds whole query groups, so it clips its own
  heads with no communication over TP.
* **Data parallel**: the recorded maxima are all-reduced (MAX) over ``dp_group`` first, so every
  replica applies the same factors (replicas would drift apart otherwise).
* **Mixed precision / distributed optimizers**: the rescale multiplies the model param in place and,
  through ``MegatronOptimizer.scale_main_params_``, every fp32 copy the optimizer holds (Float16
  main params, ZeRO-1 main shards, the layer-wise owner's main params); the optimizer state
  (moments) is left alone, as in MuonClip. Each copy is multiplied by the same fp32 factors, so the
  result does not depend on the DP layout; in bf16 the model param may differ from
  ``bf16(main)`` by one rounding until the next step copies the main params down. A pending
  overlapped param all-gather is finished before anything is scaled.
* **Host sync**: one ``.item()`` per step (the number of clipped heads) decides whether any weight
  is touched, so a step with nothing over τ costs only the all-reduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

from megatron_opt.distributed.distrib_optimizer import finish_param_sync
from megatron_opt.errors import ConfigError
from megatron_opt.parallel import ProcessGroup, group_size


@dataclass
class QKClipTarget:
    """One attention layer on this rank: its fused QKV projection and the maxima its forward recorded."""

    weight: nn.Parameter
    """Fused QKV weight with ``is_qkv`` and ``qkv_split_shapes`` (rows per query group: q heads, k, v)."""
    bias: Optional[nn.Parameter]
    max_logits: torch.Tensor
    """[local query heads] fp32: largest pre-softmax logit per head this step (-inf when none recorded)."""


@dataclass(frozen=True)
class QKClipResult:
    max_logit: float
    """Largest recorded logit over this rank's heads (after the DP max); -inf without targets."""
    clipped_heads: int
    """Heads of this rank whose q/k rows were rescaled."""


def head_layout(weight: torch.Tensor) -> Tuple[int, int]:
    """(heads_per_group, head_dim) from the weight's own attributes."""
    split = tuple(int(s) for s in (getattr(weight, "qkv_split_shapes", None) or ()))
    if not getattr(weight, "is_qkv", False) or len(split) != 3 or split[1] != split[2] or split[1] <= 0 or split[0] % split[1]:
        raise ConfigError(f"qk_clip needs a fused QKV weight with is_qkv=True and qkv_split_shapes=(heads*d, d, d); got "
                          f"is_qkv={getattr(weight, 'is_qkv', False)}, qkv_split_shapes={split or None}")
    return split[0] // split[1], split[1]


def qk_clip_factors(max_logits: torch.Tensor, threshold: float, alpha: float, heads_per_group: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(q factor per head, k factor per query group); exactly 1.0 where nothing is clipped."""
    m = max_logits.float()
    ratio = torch.where(m > threshold, threshold / m, torch.ones_like(m))
    group_ratio = ratio.view(-1, heads_per_group).amin(dim=1)
    return ratio.pow(alpha), group_ratio.pow(1.0 - alpha)


def qkv_row_scales(q_factor: torch.Tensor, k_factor: torch.Tensor, heads_per_group: int, head_dim: int) -> torch.Tensor:
    """One factor per row of the fused QKV weight: per group ``[q_1]*d ... [q_h]*d, [k]*d, [1]*d``."""
    groups = k_factor.numel()
    per_head = torch.cat([q_factor.view(groups, heads_per_group), k_factor.view(groups, 1), torch.ones_like(k_factor).view(groups, 1)], dim=1)
    return per_head.repeat_interleave(head_dim, dim=1).reshape(-1)


def row_view(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``scale`` (one per row) shaped to broadcast over ``like`` along dim 0."""
    return scale.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def clip_qk(
    targets: Sequence[QKClipTarget],
    threshold: float,
    alpha: float = 0.5,
    optimizer=None,
    dp_group: ProcessGroup = None,
    log_only: bool = False,
) -> QKClipResult:
    """Rescale the q/k rows of every head over ``threshold`` (after the optimizer step); reset the maxima.

    ``optimizer``: the MegatronOptimizer whose fp32 copies must follow the model params (None: the
    model params are all there is). ``dp_group``: the data-parallel group the maxima are reduced over.
    ``log_only`` (``--log-max-attention-logit`` without ``--qk-clip``): measure and reset, never scale;
    ``clipped_heads`` then counts the heads that WOULD have been clipped.
    """
    if not threshold > 0:
        raise ConfigError(f"qk_clip_threshold={threshold} is not allowed; expected a number > 0")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"qk_clip_alpha={alpha} is not allowed; expected a number in (0, 1)")
    if not targets:
        return QKClipResult(float("-inf"), 0)
    maxima = torch.cat([t.max_logits.float().reshape(-1) for t in targets])
    if dp_group is not None and group_size(dp_group) > 1:
        dist.all_reduce(maxima, op=dist.ReduceOp.MAX, group=dp_group)
    clipped = int((maxima > threshold).sum())  # the one host sync
    if clipped and not log_only:
        if optimizer is not None:
            finish_param_sync(optimizer)
        scales: Dict[int, Tuple[nn.Parameter, torch.Tensor]] = {}
        for target, m in zip(targets, maxima.split([t.max_logits.numel() for t in targets])):
            heads_per_group, head_dim = head_layout(target.weight)
            q_factor, k_factor = qk_clip_factors(m, threshold, alpha, heads_per_group)
            rows = qkv_row_scales(q_factor, k_factor, heads_per_group, head_dim).to(target.weight.device)
            if rows.numel() != target.weight.shape[0]:
                raise ConfigError(f"qk_clip: {m.numel()} recorded heads do not match a QKV weight of {target.weight.shape[0]} rows")
            for p in (target.weight, target.bias):
                if p is not None:
                    scales[id(p)] = (p, rows)
        for p, rows in scales.values():
            p.data.mul_(row_view(rows, p))
        if optimizer is not None:
            optimizer.scale_main_params_({key: rows for key, (_, rows) in scales.items()})
    for target in targets:
        target.max_logits.fill_(float("-inf"))
    return QKClipResult(float(maxima.max()), clipped)


__all__ = ["QKClipTarget", "QKClipResult", "clip_qk", "qk_clip_factors", "qkv_row_scales", "head_layout"]
