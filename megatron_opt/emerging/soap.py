"""SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam"): Adam in Shampoo's eigenbasis.

For a 2-D parameter with gradient ``G`` (m×n), step ``k`` = 1, 2, ..., with the current bases Q_L, Q_R:

    L2 (optional)  G ← G + λ·p                       (a copy: p.grad is untouched)
    first moment   M ← β1·M + (1 − β1)·G             (original space)
    second moment  G' = Q_Lᵀ G Q_R,   V ← β2·V + (1 − β2)·G'⊙G'   (eigenbasis coordinates)
    direction      M' = Q_Lᵀ M Q_R,   U' = (M'/c1) / (sqrt(V/c2) + eps),   U = Q_L U' Q_Rᵀ
                   (c1 = 1 − β1^k, c2 = 1 − β2^k with correct_bias, else 1)
    clip           U ← U·min(1, max_update_rms / RMS(U))   when max_update_rms > 0
    apply          p ← p·(1 − lr·λ) (decoupled decay), then p ← p − lr·U
    factors        L ← β_s·L + (1 − β_s)·G Gᵀ,   R ← β_s·R + (1 − β_s)·Gᵀ G
    basis          k = 1:              Q_L, Q_R = eigenvectors of L, R (eigh), largest eigenvalue first
                   k % f == 0, k > 1:  refresh by power iteration + QR (f = precondition_frequency)

Choices worth knowing:

* The basis a step projects with never contains that step's own gradient (as in the authors' code and
  Emerging-Optimizers). Step 1 therefore runs in the identity basis, i.e. it is a plain Adam step, and
  the eigh basis built from ``L``, ``R`` at the end of step 1 is used from step 2 on. Projecting a
  gradient into its own eigenbasis makes ``G'`` diagonal up to rounding noise, and Adam's
  ``noise/(|noise| + eps)`` then turns that noise into ±1 entries of the update (in fp32 noise ≫ eps).
* When the identity basis gives way to the first eigh basis, ``V`` (squares in the old coordinates)
  is recomputed as ``(1 − β2)·(Q_Lᵀ G Q_R)²`` from step 1's gradient: the EMA it would hold had the
  basis been in place from the start.
* The factors are not bias corrected: an EMA that starts at zero is off by a positive scalar only, and
  neither eigenvectors, their order, nor a power-iteration step depend on a positive scale.
* The first moment stays in the original space and is projected every step (the SOAP paper's
  convention), so a basis change never has to rotate it, and its state has the parameter's shape.
* Refresh: estimate the eigenvalues ``diag(Qᵀ F Q)`` in the old basis, reorder the old columns largest
  first, then ``power_iter_steps`` times ``Q ← qr(F·Q).Q``. ``V`` is not rotated (a second moment of
  rotated gradients cannot be recovered from element-wise squares); its rows/columns are permuted with
  the basis columns, so each entry stays with the eigen-direction it was measured on, which one power
  iteration moves only a little. Column signs do not matter: ``V`` is sign-free and ``M'``, ``U'`` flip
  together.

State per parameter (fp32, or fp64 for fp64 parameters): ``step``, ``exp_avg``, ``exp_avg_sq``, ``L``,
``R``, ``Q_L``, ``Q_R``. Every hyperparameter is read from the param group at each step. Only 2-D
parameters are accepted: the registry routes others to the scalar optimizer. A tensor-parallel shard
is preconditioned as the local matrix it is (blockwise).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import torch

from megatron_opt.errors import config_error
from megatron_opt.emerging import device_skip
from megatron_opt.emerging.device_skip import SkipMask, skip_mask_of
from megatron_opt.emerging.grads import gradient_of as _gradient_of

_RMS_EPS = 1e-12


def _state_dtype(p: torch.Tensor) -> torch.dtype:
    """fp32 statistics for low-precision parameters, fp64 kept for fp64 ones."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _check_hyperparameters(**hp) -> None:
    if hp["lr"] < 0:
        raise config_error("lr", hp["lr"], "a number >= 0")
    betas = tuple(hp["betas"])
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise config_error("betas", hp["betas"], "two numbers in [0, 1)")
    if not 0.0 <= hp["shampoo_beta"] < 1.0:
        raise config_error("shampoo_beta", hp["shampoo_beta"], "a number in [0, 1)")
    if hp["eps"] < 0:
        raise config_error("eps", hp["eps"], "a number >= 0")
    if hp["weight_decay"] < 0:
        raise config_error("weight_decay", hp["weight_decay"], "a number >= 0")
    freq = hp["precondition_frequency"]
    if isinstance(freq, bool) or not isinstance(freq, int) or freq < 1:
        raise config_error("precondition_frequency", freq, "an integer >= 1")
    if hp["max_update_rms"] < 0:
        raise config_error("max_update_rms", hp["max_update_rms"], "a number >= 0 (0 = no clipping)")
    steps = hp["power_iter_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise config_error("power_iter_steps", steps, "an integer >= 1")


# ---- the pieces of one step (pure tensor functions) --------------------------------------------


def eigenbasis(factor: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of a symmetric factor as columns, largest eigenvalue first (fp64 retry if fp32 eigh fails)."""
    try:
        _, vectors = torch.linalg.eigh(factor)
    except torch.linalg.LinAlgError:
        _, vectors = torch.linalg.eigh(factor.double())
    return vectors.flip(-1).to(factor.dtype)


def refresh_eigenbasis(factor: torch.Tensor, basis: torch.Tensor, steps: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Power iteration + QR from the old basis; returns (new basis, column order applied to the old one)."""
    estimated = (basis * (factor @ basis)).sum(dim=0)  # diag(Qᵀ F Q) without forming Qᵀ F Q
    order = torch.argsort(estimated, descending=True, stable=True)
    q = basis[:, order]
    for _ in range(steps):
        q = torch.linalg.qr(factor @ q).Q
    return q, order


def clip_update_rms_(update: torch.Tensor, max_rms: float) -> None:
    """Scale ``update`` down in place so its RMS is at most ``max_rms`` (no-op when 0); no host sync."""
    if max_rms <= 0:
        return
    rms = update.square().mean().sqrt()
    update.mul_((max_rms / (rms + _RMS_EPS)).clamp(max=1.0))


class SOAP(torch.optim.Optimizer):
    """Shampoo-preconditioned Adam for 2-D parameters; see the module docstring for the update.

    ``found_inf`` (set by the caller, as for torch's fused optimizers) skips the step on device: every
    state write, the step counter and the basis included, is masked (``device_skip``). Which basis
    update a step makes (step-1 eigh, refresh every ``f``-th) depends on the count of accepted steps,
    so the host keeps that count: the caller reports each outcome it has read anyway
    (``note_step_outcome``, ``MegatronOptimizer.step`` does). When the count is unknown on the host (a
    caller that does not report, a state changed in place from outside) the step reads it once.
    """

    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Iterable,
        lr: float,
        betas: Tuple[float, float] = (0.9, 0.95),
        shampoo_beta: float = 0.95,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        use_decoupled_weight_decay: bool = True,
        precondition_frequency: int = 1,
        max_update_rms: float = 0.0,
        correct_bias: bool = True,
        power_iter_steps: int = 1,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            shampoo_beta=shampoo_beta,
            eps=eps,
            weight_decay=weight_decay,
            use_decoupled_weight_decay=use_decoupled_weight_decay,
            precondition_frequency=precondition_frequency,
            max_update_rms=max_update_rms,
            correct_bias=correct_bias,
            power_iter_steps=power_iter_steps,
        )
        _check_hyperparameters(**defaults)
        super().__init__(params, defaults)
        # Per param: (value of state["step"], that tensor, its _version) as last known on the host.
        self._host_steps: Dict[torch.Tensor, Tuple[int, torch.Tensor, int]] = {}
        self._awaiting_outcome: List[torch.Tensor] = []  # stepped with found_inf, outcome not reported yet

    def add_param_group(self, param_group: dict) -> None:
        """Refuse non-matrices up front, naming the shape, rather than failing inside a matmul later."""
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            if p.dim() != 2:
                raise config_error(
                    "param.ndim", p.dim(), f"2 (SOAP preconditions matrices; a parameter of shape {tuple(p.shape)} "
                    "must go to the scalar optimizer)"
                )

    # ---- state ---------------------------------------------------------------------------------

    def init_state(self) -> None:
        """Create every parameter's state now (grad or not), so a checkpoint sees it before step 1."""
        for group in self.param_groups:
            for p in group["params"]:
                self._state_of(p)

    def _state_of(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            rows, cols = p.shape
            kw = dict(dtype=_state_dtype(p), device=p.device)
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros(rows, cols, **kw)
            state["exp_avg_sq"] = torch.zeros(rows, cols, **kw)
            state["L"] = torch.zeros(rows, rows, **kw)
            state["R"] = torch.zeros(cols, cols, **kw)
            # Step 1 runs in the identity basis; eigh replaces it at the end of step 1.
            state["Q_L"] = torch.eye(rows, **kw)
            state["Q_R"] = torch.eye(cols, **kw)
            self._remember_step(p, state, 0)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._awaiting_outcome = []
        for p, state in self.state.items():
            if "step" in state:
                self._remember_step(p, state, int(state["step"].item()))

    # ---- the accepted-step count on the host ------------------------------------------------------

    def _remember_step(self, p: torch.Tensor, state: dict, count: int) -> None:
        step = state["step"]
        self._host_steps[p] = (count, step, step._version)

    def _known_step(self, p: torch.Tensor, state: dict) -> Optional[int]:
        """state["step"] as the host knows it, or None if it was replaced or changed since (no read)."""
        known = self._host_steps.get(p)
        if known is None or known[1] is not state["step"] or known[2] != state["step"]._version:
            return None
        return known[0]

    def note_step_outcome(self, skipped: bool) -> None:
        """The caller's host copy of the decision it gave as ``found_inf`` (read after the update was queued)."""
        for p in self._awaiting_outcome:
            known = self._host_steps.get(p)
            if known is not None:
                self._host_steps[p] = (known[0] + (0 if skipped else 1),) + known[1:]
        self._awaiting_outcome = []

    # ---- step ----------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [(p, g, group) for group in self.param_groups for p in group["params"] if (g := _gradient_of(p)) is not None]
        mask = skip_mask_of(self, [g for _, g, _ in work])
        for p in self._awaiting_outcome:  # nobody reported how that device-decided step ended
            self._host_steps.pop(p, None)
        self._awaiting_outcome = []
        for p, g, group in work:
            if mask is None:
                self._update_param(p, g, self._state_of(p), group)
            else:
                self._update_param_masked(p, g, self._state_of(p), group, mask)
                self._awaiting_outcome.append(p)
        return loss

    def _update_param(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        decoupled = group["use_decoupled_weight_decay"]
        g = g.to(state["exp_avg"].dtype)
        if wd != 0 and not decoupled:
            g = g + wd * p.to(g.dtype)  # a new tensor: the model's gradient stays as it was
        state["step"] += 1
        k = int(state["step"].item())
        self._remember_step(p, state, k)
        update = self._adam_direction(state, g, k, group)
        clip_update_rms_(update, group["max_update_rms"])
        if wd != 0 and decoupled:
            p.mul_(1.0 - lr * wd)
        p.add_(update.to(p.dtype), alpha=-lr)
        self._update_factors(state, g, group["shampoo_beta"])
        self._update_basis(state, g, k, group)

    def _update_param_masked(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict, mask: SkipMask) -> None:
        """``_update_param`` with every write masked by the device decision; ``k`` is the count if accepted."""
        lr, wd = group["lr"], group["weight_decay"]
        decoupled = group["use_decoupled_weight_decay"]
        before = self._known_step(p, state)
        if before is None:
            before = int(state["step"].item())  # unknown on the host: the one read this path can make
        if state["step"].device != p.device:  # the counter joins the decision's device
            state["step"] = state["step"].to(p.device)
        k = before + 1
        g = g.to(state["exp_avg"].dtype)
        if wd != 0 and not decoupled:
            g = g + wd * p.to(g.dtype)
        update = self._adam_direction(state, g, k, group, mask)
        clip_update_rms_(update, group["max_update_rms"])
        if wd != 0 and decoupled:
            device_skip.mul_(p, 1.0 - lr * wd, mask)
        device_skip.add_(p, update.to(p.dtype), -lr, mask)
        self._update_factors(state, g, group["shampoo_beta"], mask)
        self._update_basis(state, g, k, group, mask)
        device_skip.write_(state["step"], state["step"] + 1, mask)
        self._remember_step(p, state, before)  # note_step_outcome adds the step once it is known

    @staticmethod
    def _update_factors(state: dict, g: torch.Tensor, shampoo_beta: float, mask: Optional[SkipMask] = None) -> None:
        # Plain β·F + (1 − β)·(outer product): eigh's choice inside a degenerate eigenspace (a rectangular
        # matrix's null space on step 1) depends on the last bit, so the arithmetic is kept unsurprising.
        if mask is None:
            state["L"].mul_(shampoo_beta).add_((g @ g.T).mul_(1.0 - shampoo_beta))
            state["R"].mul_(shampoo_beta).add_((g.T @ g).mul_(1.0 - shampoo_beta))
            return
        device_skip.write_(state["L"], state["L"].mul(shampoo_beta).add_((g @ g.T).mul_(1.0 - shampoo_beta)), mask)
        device_skip.write_(state["R"], state["R"].mul(shampoo_beta).add_((g.T @ g).mul_(1.0 - shampoo_beta)), mask)

    @staticmethod
    def _update_basis(state: dict, g: torch.Tensor, k: int, group: dict, mask: Optional[SkipMask] = None) -> None:
        """The basis for the next step; in place, so holders of the state tensors see the new one.

        With a skip ``mask`` the factors are already masked (finite), the new basis is computed as if the
        step were accepted and written only if it is."""
        if k == 1:
            q_l, q_r = eigenbasis(state["L"]), eigenbasis(state["R"])
            device_skip.write_(state["Q_L"], q_l, mask)
            device_skip.write_(state["Q_R"], q_r, mask)
            g_rot = q_l.T @ g @ q_r
            device_skip.write_(state["exp_avg_sq"], g_rot.square_().mul_(1.0 - group["betas"][1]), mask)
        elif k % group["precondition_frequency"] == 0:
            steps = group["power_iter_steps"]
            q_l, rows = refresh_eigenbasis(state["L"], state["Q_L"], steps)
            q_r, cols = refresh_eigenbasis(state["R"], state["Q_R"], steps)
            device_skip.write_(state["Q_L"], q_l, mask)
            device_skip.write_(state["Q_R"], q_r, mask)
            device_skip.write_(state["exp_avg_sq"], state["exp_avg_sq"][rows][:, cols], mask)

    @staticmethod
    def _adam_direction(state: dict, g: torch.Tensor, k: int, group: dict, mask: Optional[SkipMask] = None) -> torch.Tensor:
        """Adam in the eigenbasis, mapped back to the parameter's coordinates (the new moments, masked writes)."""
        beta1, beta2 = group["betas"]
        q_l, q_r = state["Q_L"], state["Q_R"]
        exp_avg = device_skip.lerp_(state["exp_avg"], g, 1.0 - beta1, mask)
        g_rot = q_l.T @ g @ q_r
        exp_avg_sq = state["exp_avg_sq"]
        if mask is None:
            exp_avg_sq.mul_(beta2).addcmul_(g_rot, g_rot, value=1.0 - beta2)
        else:
            exp_avg_sq = device_skip.write_(exp_avg_sq, exp_avg_sq.mul(beta2).addcmul_(g_rot, g_rot, value=1.0 - beta2), mask)
        c1, c2 = (1.0 - beta1**k, 1.0 - beta2**k) if group["correct_bias"] else (1.0, 1.0)
        denom = (exp_avg_sq / c2).sqrt_().add_(group["eps"])
        u_rot = (q_l.T @ exp_avg @ q_r).div_(c1).div_(denom)
        return q_l @ u_rot @ q_r.T


__all__ = ["SOAP", "eigenbasis", "refresh_eigenbasis", "clip_update_rms_"]
