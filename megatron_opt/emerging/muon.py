"""Muon with tensor parallelism and split-QKV: momentum, then Newton–Schulz, then a shape-dependent scale.

Per parameter, each step (``g`` the gradient, ``μ`` momentum, ``λ`` weight decay):

    decoupled decay   p ← p·(1 − lr·λ)        (L2 instead: g ← g + λ·p, p.grad untouched)
    momentum (EMA)    m ← lerp(m, g, 1 − μ)
    direction         C = lerp(g, m, μ) with Nesterov, else m
    orthogonalize     O = NS(C)               (per Q/K/V block with split_qkv)
    update            p ← p − lr · scale(m, n) · extra_scale_factor · O

``lr``, ``weight_decay``, ``momentum`` and ``extra_scale_factor`` are read from the param group at every
step (the LR scheduler rewrites them); the rest is fixed per optimizer. Same-shape matrices go through
one batched Newton–Schulz call.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from megatron_opt.config import NS_ALGORITHMS, SCALE_MODES, TP_MODES
from megatron_opt.emerging.newton_schulz import (SYRK_MIN_ROWS, fp32_matmul_precision, iteration_dtype, orthogonalize_tp,
                                                 validate_precision)
from megatron_opt.emerging.newton_schulz_gram import GramSchedule, default_restarts
from megatron_opt.errors import config_error
from megatron_opt.ns_coefficients import Triple, coefficients_for_steps
from megatron_opt.parallel import ProcessGroup, all_reduce, group_size
from megatron_opt.emerging import device_skip
from megatron_opt.emerging.device_skip import SkipMask, skip_mask_of
from megatron_opt.emerging.grads import gradient_of

logger = logging.getLogger(__name__)

# Matrices at most this big are stacked into one batched NS call (bmm helps small matrices on CPU and
# launch-bound GPUs; for large ones it only adds the stacking copy). A batch is capped in total size.
_BATCH_MAX_MATRIX_NUMEL = 1 << 18
_BATCH_MAX_TOTAL_NUMEL = 1 << 24


def muon_scale_factor(rows: int, cols: int, scale_mode: str) -> float:
    """``spectral`` √max(m,n) · ``unit_rms_norm`` √(m/n) · ``shape_scaling`` √max(1, m/n); m = rows (fan-out)."""
    if scale_mode == "spectral":
        return math.sqrt(max(rows, cols))
    if scale_mode == "unit_rms_norm":
        return math.sqrt(rows / cols)
    if scale_mode == "shape_scaling":
        return math.sqrt(max(1.0, rows / cols))
    raise config_error("scale_mode", scale_mode, "one of " + ", ".join(SCALE_MODES))


@dataclass(frozen=True)
class MatrixPlan:
    """How one parameter is orthogonalized; fixed by its attributes, shape and the TP size."""

    global_shape: Tuple[int, int]
    """Shape used for the scale (and normuon's reduction dim): global under TP, local for blockwise."""
    sharded_dim: Optional[int]
    """The matrix dim that is split over TP ranks, when NS and reductions must see the whole matrix."""
    qkv_split: Optional[Tuple[int, ...]]
    """Rows of Q, K, V per query group when the blocks are orthogonalized separately."""
    block_scales: Tuple[float, ...]
    """scale(m, n) of each block (one block unless qkv_split)."""


def _local_blocks(t: torch.Tensor, split: Optional[Tuple[int, ...]]) -> List[torch.Tensor]:
    """Views of ``t`` as its Q, K, V blocks, each (groups, rows_per_group, cols); or ``[t]``."""
    if split is None:
        return [t]
    return list(t.view(-1, sum(split), t.size(-1)).split(split, dim=1))


class TensorParallelMuon(torch.optim.Optimizer):
    """Muon for 2-D weights that may be sharded over a tensor-parallel group (see module docstring).

    ``tp_mode``: ``duplicated`` (all-gather, full NS, keep own chunk), ``distributed`` (sharded NS with
    all-reduced Grams; same result), ``blockwise`` (each shard on its own; scale from the local shape).
    ``ns_algorithm="gram"``: the Gram-space NS with restarts after ``gram_restarts`` (default every 3rd
    step) for matrices ≥ 1.5:1. ``use_syrk``: symmetric-block products on every device (docs/muon.md).

    ``found_inf`` (set by the caller, as for torch's fused optimizers) skips the step on device: decay,
    momentum, second moments and the update are masked writes, nothing is read back
    (``megatron_opt.emerging.device_skip``). Newton–Schulz still runs on a skipped step.
    """

    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Iterable,
        lr: float = 3e-4,
        momentum: float = 0.95,
        nesterov: bool = False,
        weight_decay: float = 0.01,
        use_decoupled_weight_decay: bool = True,
        split_qkv: bool = False,
        coefficient_type: str = "quintic",
        custom_coefficients: Optional[Sequence[Triple]] = None,
        num_ns_steps: int = 5,
        scale_mode: str = "spectral",
        extra_scale_factor: float = 1.0,
        fp32_matmul_prec: str = "medium",
        tp_mode: str = "duplicated",
        tp_group: ProcessGroup = None,
        ns_algorithm: str = "standard",
        gram_restarts: Optional[Sequence[int]] = None,
        use_syrk: bool = False,
    ) -> None:
        if lr < 0:
            raise config_error("lr", lr, "a number >= 0")
        if not 0.0 <= momentum < 1.0:
            raise config_error("momentum", momentum, "a number in [0, 1)")
        if weight_decay < 0:
            raise config_error("weight_decay", weight_decay, "a number >= 0")
        if num_ns_steps < 1:
            raise config_error("num_ns_steps", num_ns_steps, "an integer >= 1")
        if scale_mode not in SCALE_MODES:
            raise config_error("scale_mode", scale_mode, "one of " + ", ".join(SCALE_MODES))
        if tp_mode not in TP_MODES:
            raise config_error("tp_mode", tp_mode, "one of " + ", ".join(TP_MODES))
        validate_precision(fp32_matmul_prec)
        if ns_algorithm not in NS_ALGORITHMS:
            raise config_error("ns_algorithm", ns_algorithm, "one of " + ", ".join(NS_ALGORITHMS))
        if extra_scale_factor <= 0:
            raise config_error("extra_scale_factor", extra_scale_factor, "a number > 0")
        # Resolves cycle/repeat_last, checks the type, custom triples and cubic5's step count now.
        self.ns_coefficients = coefficients_for_steps(coefficient_type, num_ns_steps, custom_coefficients)
        self.nesterov = nesterov
        self.use_decoupled_weight_decay = use_decoupled_weight_decay
        self.split_qkv = split_qkv
        self.scale_mode = scale_mode
        self.fp32_matmul_prec = fp32_matmul_prec
        self._ns_dtype = iteration_dtype(fp32_matmul_prec)
        self.tp_mode = tp_mode
        self.tp_group = tp_group
        restarts = default_restarts(len(self.ns_coefficients)) if gram_restarts is None else tuple(gram_restarts)
        self.gram = GramSchedule(restart_after=restarts) if ns_algorithm == "gram" else None
        self.symmetric_min_rows = SYRK_MIN_ROWS if use_syrk else None
        self._plans: Dict[torch.Tensor, MatrixPlan] = {}
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, extra_scale_factor=extra_scale_factor)
        super().__init__(params, defaults)

    # ---- state ---------------------------------------------------------------------------------

    def init_state(self) -> None:
        """Create every parameter's state now (grad or not), so a checkpoint sees it before step 1."""
        for group in self.param_groups:
            for p in group["params"]:
                self._state_of(p)

    def _state_of(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            self._init_param_state(p, state)
        return state

    def _init_param_state(self, p: torch.Tensor, state: dict) -> None:
        if p.dim() != 2:
            raise config_error("param.ndim", p.dim(), "2 (route other parameters to the scalar optimizer)")
        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    # ---- per-parameter plan --------------------------------------------------------------------

    def plan(self, p: torch.Tensor) -> MatrixPlan:
        cached = self._plans.get(p)
        if cached is None:
            cached = self._plans[p] = self._make_plan(p)
        return cached

    def _make_plan(self, p: torch.Tensor) -> MatrixPlan:
        rows, cols = p.shape
        tp = group_size(self.tp_group)
        pdim = getattr(p, "partition_dim", -1) if getattr(p, "tensor_model_parallel", False) else -1
        sharded = pdim in (0, 1) and tp > 1
        global_shape = [rows, cols]
        if sharded:
            global_shape[pdim] *= tp
        split = self._qkv_split(p, global_shape[0], rows)
        # blockwise orthogonalizes (and scales) each shard as the matrix it is locally.
        m, n = (rows, cols) if self.tp_mode == "blockwise" else global_shape
        if split is None:
            scales = (muon_scale_factor(m, n, self.scale_mode),)
        else:
            groups = m // sum(split)
            scales = tuple(muon_scale_factor(groups * s, n, self.scale_mode) for s in split)
        sharded_dim = pdim if sharded and self.tp_mode != "blockwise" else None
        return MatrixPlan((m, n), sharded_dim, split, scales)

    def _qkv_split(self, p: torch.Tensor, global_rows: int, local_rows: int) -> Optional[Tuple[int, ...]]:
        """Decided on the GLOBAL rows, so every TP size takes the same update rule."""
        if not (self.split_qkv and getattr(p, "is_qkv", False)):
            return None
        split = tuple(int(s) for s in getattr(p, "qkv_split_shapes", ()) or ())
        if not split or any(s <= 0 for s in split):
            logger.warning("split_qkv: parameter of shape %s has is_qkv but no valid qkv_split_shapes (%r); "
                           "orthogonalizing it as one matrix", tuple(p.shape), split)
            return None
        if global_rows % sum(split) != 0:
            logger.warning("split_qkv: global rows %d are not divisible by sum(qkv_split_shapes)=%d (%r); "
                           "orthogonalizing the fused QKV weight as one matrix", global_rows, sum(split), split)
            return None
        if local_rows % sum(split) != 0:
            logger.warning("split_qkv: the local shard of %d rows does not hold whole query groups of %d rows "
                           "(TP size > number of query groups?); orthogonalizing the fused QKV weight as one matrix",
                           local_rows, sum(split))
            return None
        return split

    # ---- step ----------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        by_group = [(group, [(p, g) for p in group["params"] if (g := gradient_of(p)) is not None]) for group in self.param_groups]
        mask = skip_mask_of(self, [g for _, pairs in by_group for _, g in pairs])
        work = []  # (param, state, group, direction)
        for group, pairs in by_group:
            if not pairs:
                continue
            params, grads = [p for p, _ in pairs], [g for _, g in pairs]
            states = [self._state_of(p) for p in params]
            directions = self._momentum_directions(params, grads, [s["momentum_buffer"] for s in states], group, mask)
            work += list(zip(params, states, [group] * len(params), directions))
        if not work:
            return loss
        with fp32_matmul_precision(self.fp32_matmul_prec):
            orthogonalized = self._orthogonalize_all([(p, d) for p, _, _, d in work])
        for (p, state, group, direction), ortho in zip(work, orthogonalized):
            update = self._precondition(p, state, group, direction, ortho, mask)
            self._apply_update(p, update, group, mask)
        return loss

    def _momentum_directions(self, params: List[torch.Tensor], grads: List[torch.Tensor], bufs: List[torch.Tensor],
                             group: dict, mask: Optional[SkipMask] = None) -> List[torch.Tensor]:
        """Weight decay, momentum EMA and the (Nesterov) direction of one param group, as foreach ops;
        with a device-side skip ``mask``, as masked per-tensor writes (emerging/device_skip.py)."""
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        if mask is not None:
            return [self._masked_momentum_direction(p, g, buf, lr, wd, mu, mask) for p, g, buf in zip(params, grads, bufs)]
        if wd != 0:
            if self.use_decoupled_weight_decay:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            else:
                grads = torch._foreach_add(grads, params, alpha=wd)  # L2 into copies: p.grad / main_grad untouched
        torch._foreach_lerp_(bufs, grads, 1.0 - mu)
        return torch._foreach_lerp(grads, bufs, mu) if self.nesterov else list(bufs)

    def _masked_momentum_direction(self, p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, lr: float, wd: float,
                                   mu: float, mask: SkipMask) -> torch.Tensor:
        if wd != 0:
            if self.use_decoupled_weight_decay:
                device_skip.mul_(p, 1.0 - lr * wd, mask)
            else:
                g = g.add(p, alpha=wd)  # L2 into a copy: p.grad / main_grad stay as the model left them
        buf = device_skip.lerp_(buf, g, 1.0 - mu, mask)
        return g.lerp(buf, mu) if self.nesterov else buf

    def _precondition(self, p, state, group, direction, ortho, mask: Optional[SkipMask] = None):
        """Hook between NS and the update (adaptive variants); Muon uses the NS output as is."""
        return ortho

    def _apply_update(self, p: torch.Tensor, update: torch.Tensor, group: dict, mask: Optional[SkipMask] = None) -> None:
        """p ← p − lr · extra · scale(block) · U, block by block (one block unless split QKV)."""
        plan = self.plan(p)
        step = -group["lr"] * group["extra_scale_factor"]
        for p_block, u_block, scale in zip(_local_blocks(p, plan.qkv_split), _local_blocks(update, plan.qkv_split), plan.block_scales):
            device_skip.add_(p_block, u_block.to(p.dtype), step * scale, mask)

    # ---- Newton–Schulz over all matrices of the step -----------------------------------------

    def _orthogonalize_all(self, items: List[Tuple[torch.Tensor, torch.Tensor]]) -> List[torch.Tensor]:
        """NS of every direction (its Q/K/V blocks separately), same-shape matrices batched together."""
        matrices: List[Tuple[torch.Tensor, Optional[int]]] = []  # (fp32 matrix, sharded dim)
        layout = []  # per item: (plan, [index into matrices per block])
        for p, direction in items:
            plan = self.plan(p)
            idx = []
            for block in _local_blocks(direction, plan.qkv_split):
                idx.append(len(matrices))
                matrices.append((block.reshape(-1, block.size(-1)).float(), plan.sharded_dim))
            layout.append((plan, idx))
        results = self._newton_schulz_batched(matrices)
        out = []
        for (p, _), (plan, idx) in zip(items, layout):
            if plan.qkv_split is None:
                out.append(results[idx[0]])
            else:
                groups = p.size(0) // sum(plan.qkv_split)
                blocks = [results[i].view(groups, -1, p.size(1)) for i in idx]
                out.append(torch.cat(blocks, dim=1).view(p.shape))
        return out

    def _newton_schulz_batched(self, matrices: List[Tuple[torch.Tensor, Optional[int]]]) -> List[torch.Tensor]:
        results: List[Optional[torch.Tensor]] = [None] * len(matrices)
        buckets: Dict[tuple, List[int]] = {}
        for i, (x, sharded_dim) in enumerate(matrices):
            key = (tuple(x.shape), sharded_dim, x.device)
            if x.numel() > _BATCH_MAX_MATRIX_NUMEL:
                key = key + (i,)  # large: its own call
            buckets.setdefault(key, []).append(i)
        for key, indices in buckets.items():
            sharded_dim = key[1]
            per_batch = max(1, _BATCH_MAX_TOTAL_NUMEL // matrices[indices[0]][0].numel())
            for start in range(0, len(indices), per_batch):
                chunk = indices[start:start + per_batch]
                x = matrices[chunk[0]][0] if len(chunk) == 1 else torch.stack([matrices[i][0] for i in chunk])
                o = self._newton_schulz(x, sharded_dim)
                if len(chunk) == 1:
                    results[chunk[0]] = o
                else:
                    for i, oi in zip(chunk, o.unbind(0)):
                        results[i] = oi
        return results  # type: ignore[return-value]

    def _newton_schulz(self, x: torch.Tensor, sharded_dim: Optional[int]) -> torch.Tensor:
        return orthogonalize_tp(x, self.ns_coefficients, self.tp_group, sharded_dim, self.tp_mode, dtype=self._ns_dtype,
                                symmetric_min_rows=self.symmetric_min_rows, gram=self.gram)

    # ---- helpers for subclasses -----------------------------------------------------------------

    def _sum_over_shards(self, t: torch.Tensor, p: torch.Tensor, reduced_dims: Tuple[int, ...]) -> torch.Tensor:
        """All-reduce a partial sum over TP when one of ``reduced_dims`` is this parameter's sharded dim."""
        sharded = self.plan(p).sharded_dim
        if sharded is not None and sharded in reduced_dims:
            all_reduce(t, self.tp_group)
        return t


__all__ = ["TensorParallelMuon", "MatrixPlan", "muon_scale_factor", "gradient_of"]
