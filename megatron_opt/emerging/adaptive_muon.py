"""Muon with a second moment on the orthogonalized update (AdaMuon, NorMuon, NAMO).

``O`` is the raw Newton–Schulz output (before any scale), ``C`` the momentum direction fed to NS:

    adamuon   V ← lerp(V, O², 1−β2);                     U = O / (√V + ε)          (V elementwise)
    normuon   V ← lerp(V, mean(O², d), 1−β2);            U = O · rsqrt(max(V, ε)),  U ← U · ‖O‖_F / max(‖U‖_F, ε)
              with d the long side: mean over columns (one V per row) when m ≥ n, else over rows
    namo      v ← lerp(v, ‖C‖_F², 1−β2);                 U = O · ‖C‖_F / (√v + ε)   (v scalar)

then ``p ← p − lr · scale(m, n) · extra_scale_factor · U``: the Muon scale is applied once (Megatron
HEAD applies it inside NS and again after the second moment). Under tensor parallelism every sum
over a sharded dimension is all-reduced over the TP group, so ``duplicated`` and ``distributed`` equal
the unsharded optimizer; ``blockwise`` treats each shard as its own matrix, second moment included.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from megatron_opt.config import MOMENT2_METHODS
from megatron_opt.emerging.device_skip import lerp_
from megatron_opt.emerging.muon import TensorParallelMuon
from megatron_opt.errors import config_error


class TensorParallelAdaptiveMuon(TensorParallelMuon):
    """``TensorParallelMuon`` plus a second-moment normalisation of its update (see module docstring)."""

    def __init__(
        self,
        params: Iterable,
        moment2_method: str = "adamuon",
        beta2: float = 0.95,
        eps: float = 1e-8,
        **muon_kwargs: Any,
    ) -> None:
        if moment2_method not in MOMENT2_METHODS:
            raise config_error("moment2_method", moment2_method, "one of " + ", ".join(MOMENT2_METHODS))
        if not 0.0 <= beta2 < 1.0:
            raise config_error("beta2", beta2, "a number in [0, 1)")
        if not eps > 0:
            raise config_error("eps", eps, "a number > 0")
        if moment2_method == "namo" and not muon_kwargs.get("use_decoupled_weight_decay", True):
            raise config_error("use_decoupled_weight_decay", False, "True with moment2_method='namo' (NAMO has no L2 decay)")
        self.moment2_method = moment2_method
        super().__init__(params, **muon_kwargs)
        self.defaults.update(beta2=beta2, eps=eps)
        for group in self.param_groups:
            group.setdefault("beta2", beta2)
            group.setdefault("eps", eps)

    def _reduced_dim(self, p: torch.Tensor) -> int:
        """normuon's mean runs along the long side: over columns (-1) when m ≥ n, else over rows (-2)."""
        m, n = self.plan(p).global_shape
        return -1 if m >= n else -2

    def _init_param_state(self, p: torch.Tensor, state: dict) -> None:
        super()._init_param_state(p, state)
        if self.moment2_method == "adamuon":
            state["moment2_buffer"] = torch.zeros_like(p, dtype=torch.float32)
        elif self.moment2_method == "normuon":
            shape = list(p.shape)
            shape[self._reduced_dim(p)] = 1
            state["moment2_buffer"] = torch.zeros(shape, dtype=torch.float32, device=p.device)
        else:
            state["moment2_buffer"] = torch.zeros((), dtype=torch.float32, device=p.device)

    def _precondition(self, p, state, group, direction, ortho, mask=None):
        beta2, eps = group["beta2"], group["eps"]
        v = state["moment2_buffer"]  # each lerp_ below returns the new V (masked write with a skip mask)
        if self.moment2_method == "adamuon":
            v = lerp_(v, ortho.square(), 1.0 - beta2, mask)
            return ortho / v.sqrt().add_(eps)
        if self.moment2_method == "normuon":
            d = self._reduced_dim(p)
            m, n = self.plan(p).global_shape
            row_or_col_sq = self._sum_over_shards(ortho.square().sum(dim=d, keepdim=True), p, (d + 2,))
            v = lerp_(v, row_or_col_sq.div_(n if d == -1 else m), 1.0 - beta2, mask)
            update = ortho * v.clamp(min=eps).rsqrt()
            sq_norms = self._sum_over_shards(torch.stack([ortho.square().sum(), update.square().sum()]), p, (0, 1))
            return update.mul_(sq_norms[0].sqrt() / sq_norms[1].sqrt().clamp(min=eps))
        c_sq_norm = self._sum_over_shards(direction.float().square().sum(), p, (0, 1))
        v = lerp_(v, c_sq_norm, 1.0 - beta2, mask)
        return ortho * (c_sq_norm.sqrt() / (v.sqrt() + eps))


__all__ = ["TensorParallelAdaptiveMuon"]
