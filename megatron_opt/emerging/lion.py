"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of a momentum blend.

Per parameter, each step (``g`` the gradient, ``m`` the one moment ``exp_avg``, ``λ`` weight decay):

    decay      p ← p·(1 − lr·λ)                  (L2 instead: g ← g + λ·p, p.grad untouched)
    update     u = sign(β1·m + (1 − β1)·g)
    apply      p ← p − lr·u
    momentum   m ← β2·m + (1 − β2)·g

Lion keeps a single moment, so a distributed optimizer shards just ``exp_avg``. It accepts every shape
(matrices, biases, norms, embeddings, 0-d scalars), which is why it can serve as Muon's scalar optimizer.
``lr``, ``weight_decay`` and ``betas`` are read from the param group at every step (an LR scheduler
rewrites them; a group may carry its own ``betas``). Unknown group keys are ignored.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import torch

from megatron_opt.errors import config_error
from megatron_opt.emerging import device_skip
from megatron_opt.emerging.device_skip import SkipMask, skip_mask_of
from megatron_opt.emerging.grads import gradient_of as _gradient_of

_Key = Tuple[torch.device, torch.dtype]


def _check_hyperparameters(lr: float, betas: Tuple[float, float], weight_decay: float) -> None:
    if lr < 0:
        raise config_error("lr", lr, "a number >= 0")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise config_error("betas", betas, "two numbers in [0, 1)")
    if weight_decay < 0:
        raise config_error("weight_decay", weight_decay, "a number >= 0")


class Lion(torch.optim.Optimizer):
    """Lion with decoupled (default) or L2 weight decay; see the module docstring for the update.

    ``foreach``: ``True`` updates each (device, dtype) bucket with ``torch._foreach_*`` kernels, ``False``
    loops over tensors; ``None`` picks foreach when every parameter lives off the CPU. Both paths give
    the same bits.

    ``found_inf`` (set by the caller, as for torch's fused optimizers) skips the step on device: every
    write is masked, nothing is read back (``megatron_opt.emerging.device_skip``).
    """

    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        betas: Tuple[float, float] = (0.95, 0.98),
        weight_decay: float = 0.0,
        use_decoupled_weight_decay: bool = True,
        *,
        foreach: Optional[bool] = None,
    ) -> None:
        _check_hyperparameters(lr, tuple(betas), weight_decay)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
            use_decoupled_weight_decay=use_decoupled_weight_decay,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    # ---- state ---------------------------------------------------------------------------------

    def init_state(self) -> None:
        """Create every parameter's ``exp_avg`` now (grad or not), so a checkpoint sees it before step 1."""
        for group in self.param_groups:
            for p in group["params"]:
                self._exp_avg(p)

    def _exp_avg(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["exp_avg"]

    # ---- step ----------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        collected = [self._collect(group) for group in self.param_groups]
        mask = skip_mask_of(self, [g for _, grads, _ in collected for g in grads])
        for group, (params, grads, moments) in zip(self.param_groups, collected):
            if not params:
                continue
            use_foreach = group.get("foreach")
            if use_foreach is None:
                use_foreach = all(p.device.type != "cpu" for p in params)
            update = _multi_tensor_lion if use_foreach else _single_tensor_lion
            update(
                params,
                grads,
                moments,
                lr=group["lr"],
                beta1=group["betas"][0],
                beta2=group["betas"][1],
                weight_decay=group["weight_decay"],
                decoupled=group.get("use_decoupled_weight_decay", True),
                mask=mask,
            )
        return loss

    def _collect(self, group: dict) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """Parameters with a gradient, their gradients (in the parameter's dtype) and moments."""
        params, grads, moments = [], [], []
        for p in group["params"]:
            g = _gradient_of(p)
            if g is None:
                continue
            if g.is_sparse:
                raise config_error("gradient layout", "sparse", "dense gradients (Lion has no sparse update)")
            params.append(p)
            grads.append(g if g.dtype == p.dtype else g.to(p.dtype))
            moments.append(self._exp_avg(p))
        return params, grads, moments


def _single_tensor_lion(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    moments: List[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    decoupled: bool,
    mask: Optional[SkipMask] = None,
) -> None:
    """The straightforward loop; the reference the foreach path must match bit for bit."""
    for p, g, m in zip(params, grads, moments):
        if weight_decay != 0:
            if decoupled:
                device_skip.mul_(p, 1.0 - lr * weight_decay, mask)
            else:
                g = g.add(p, alpha=weight_decay)  # a copy: the model's gradient stays as it was
        device_skip.add_(p, m.lerp(g, 1.0 - beta1).sign_(), -lr, mask)
        device_skip.lerp_(m, g, 1.0 - beta2, mask)


def _multi_tensor_lion(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    moments: List[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    decoupled: bool,
    mask: Optional[SkipMask] = None,
) -> None:
    """Same arithmetic as ``_single_tensor_lion``, one foreach kernel per op per (device, dtype) bucket.

    With a skip ``mask`` the new values are computed out of place and written with one select each."""
    for p_b, g_b, m_b in _buckets(params, grads, moments):
        new_p = p_b if mask is None else [p.clone() for p in p_b]
        if weight_decay != 0:
            if decoupled:
                torch._foreach_mul_(new_p, 1.0 - lr * weight_decay)
            else:
                g_b = torch._foreach_add(g_b, p_b, alpha=weight_decay)
        direction = torch._foreach_lerp(m_b, g_b, 1.0 - beta1)
        torch._foreach_sign_(direction)
        torch._foreach_add_(new_p, direction, alpha=-lr)
        if mask is None:
            torch._foreach_lerp_(m_b, g_b, 1.0 - beta2)
            continue
        new_m = torch._foreach_lerp(m_b, g_b, 1.0 - beta2)
        for dst, new in zip(p_b + m_b, new_p + list(new_m)):
            mask.keep_or_write_(dst, new)


def _buckets(params, grads, moments):
    """Foreach kernels need one device and dtype per list."""
    buckets: Dict[_Key, Tuple[list, list, list]] = {}
    for p, g, m in zip(params, grads, moments):
        b = buckets.setdefault((p.device, p.dtype), ([], [], []))
        b[0].append(p)
        b[1].append(g)
        b[2].append(m)
    return list(buckets.values())


__all__ = ["Lion"]
