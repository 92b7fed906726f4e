"""Device-side skip for our optimizers: the ``found_inf`` protocol of torch's fused optimizers.

A caller (``MegatronOptimizer`` on the skip-step device path, or ``torch.amp.GradScaler``) sets
``optimizer.found_inf`` (a 1-element or 0-d float tensor, non-zero = skip) and ``grad_scale`` before
``step()``. The optimizer then computes every new value as it always would and writes it through a
device-side select, ``torch.where(skip, old, new)``: on a skipped step parameters and state keep their
bits, on any other step they get exactly the bits the unmasked update gives, and nothing is read back
to the host. Without ``found_inf`` the helpers below run today's in-place ops unchanged.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch


class SkipMask:
    """The 0-d bool skip decision, copied once to each device it is needed on (device→device, no host read)."""

    def __init__(self, skip: torch.Tensor) -> None:
        self._by_device: Dict[torch.device, torch.Tensor] = {skip.device: skip}

    def on(self, device: torch.device) -> torch.Tensor:
        mask = self._by_device.get(device)
        if mask is None:
            mask = self._by_device[device] = next(iter(self._by_device.values())).to(device, non_blocking=True)
        return mask

    def keep_or_write_(self, dst: torch.Tensor, new: torch.Tensor) -> None:
        """``dst ← new`` unless skipped; one elementwise select into ``dst`` itself."""
        torch.where(self.on(dst.device), dst, new, out=dst)


def skip_mask_of(optimizer: torch.optim.Optimizer, grads: Iterable[torch.Tensor] = ()) -> Optional[SkipMask]:
    """The skip mask handed to this ``step()`` (None: no device skip asked for, today's path).

    ``grad_scale`` (set by ``torch.amp.GradScaler`` when the grads are still scaled) divides ``grads``
    in place, as torch's fused kernels do.
    """
    grad_scale = getattr(optimizer, "grad_scale", None)
    if grad_scale is not None:
        for g in grads:
            g.div_(grad_scale.to(g.device, non_blocking=True).reshape(()))
    found_inf = getattr(optimizer, "found_inf", None)
    if found_inf is None:
        return None
    return SkipMask(found_inf.reshape(()) != 0)


def mul_(t: torch.Tensor, factor: float, mask: Optional[SkipMask]) -> torch.Tensor:
    if mask is None:
        return t.mul_(factor)
    new = t.mul(factor)
    mask.keep_or_write_(t, new)
    return new


def add_(t: torch.Tensor, other: torch.Tensor, alpha: float, mask: Optional[SkipMask]) -> torch.Tensor:
    if mask is None:
        return t.add_(other, alpha=alpha)
    new = t.add(other, alpha=alpha)
    mask.keep_or_write_(t, new)
    return new


def lerp_(t: torch.Tensor, end: torch.Tensor, weight, mask: Optional[SkipMask]) -> torch.Tensor:
    """``t.lerp_(end, weight)``; returns the value the caller goes on with (the new one, also when skipped)."""
    if mask is None:
        return t.lerp_(end, weight)
    new = t.lerp(end, weight)
    mask.keep_or_write_(t, new)
    return new


def write_(t: torch.Tensor, new: torch.Tensor, mask: Optional[SkipMask]) -> torch.Tensor:
    """``t.copy_(new)`` unless skipped."""
    if mask is None:
        return t.copy_(new)
    mask.keep_or_write_(t, new)
    return new


__all__ = ["SkipMask", "skip_mask_of", "mul_", "add_", "lerp_", "write_"]
