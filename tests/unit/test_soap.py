"""SOAP against a plain fp64 loop written here, against torch AdamW where SOAP must reduce to Adam, and its entry."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_opt.config import OptimizerConfig
from megatron_opt.emerging.entries_lion_soap import is_soap_excluded, register_lion_and_soap, soap_config_to_kwargs, soap_default_param_overrides
from megatron_opt.emerging.soap import SOAP
from megatron_opt.errors import ConfigError
from megatron_opt.parallel import ProcessGroupCollection

STEPS = 10
TOL = dict(atol=1e-10, rtol=1e-9)  # fp64 throughout; the two implementations differ only in rounding
STATE_KEYS = {"step", "exp_avg", "exp_avg_sq", "L", "R", "Q_L", "Q_R"}


def _refresh(factor, basis, steps):
    """Order the old columns by their estimated eigenvalue (largest first), then power iteration + QR."""
    estimated = torch.diag(basis.T @ factor @ basis).tolist()
    order = sorted(range(len(estimated)), key=lambda i: -estimated[i])
    q = basis[:, order]
    for _ in range(steps):
        q, _ = torch.linalg.qr(factor @ q)
    return q, order


def soap_reference(p, grads, lr, betas=(0.9, 0.95), shampoo_beta=0.95, eps=1e-8, wd=0.0, decoupled=True, freq=1,
                   max_rms=0.0, correct_bias=True, power_iter_steps=1):
    """SOAP for one matrix, one formula per line (see megatron_opt/emerging/soap.py's docstring); lr may be a list per step.

    L and R are built with the same float operations as the optimizer on purpose: on step 1 a rectangular
    gradient leaves a degenerate (null) eigenspace whose eigh basis is decided by the last bit.
    """
    p = p.clone()
    rows, cols = p.shape
    L, R = torch.zeros(rows, rows, dtype=p.dtype), torch.zeros(cols, cols, dtype=p.dtype)
    M, V = torch.zeros_like(p), torch.zeros_like(p)
    b1, b2 = betas
    QL, QR = torch.eye(rows, dtype=p.dtype), torch.eye(cols, dtype=p.dtype)  # step 1 is plain Adam
    lrs = lr if isinstance(lr, list) else [lr] * len(grads)
    for k, (G, lr) in enumerate(zip(grads, lrs), start=1):
        if wd and not decoupled:
            G = G + wd * p
        M = b1 * M + (1 - b1) * G
        G_rot = QL.T @ G @ QR
        V = b2 * V + (1 - b2) * G_rot * G_rot
        c1, c2 = (1 - b1**k, 1 - b2**k) if correct_bias else (1.0, 1.0)
        U_rot = (QL.T @ M @ QR) / c1 / (torch.sqrt(V / c2) + eps)
        U = QL @ U_rot @ QR.T
        if max_rms > 0:
            rms = math.sqrt((U * U).mean().item())
            if rms > max_rms:
                U = U * (max_rms / rms)
        if wd and decoupled:
            p = p * (1 - lr * wd)
        p = p - lr * U
        # The basis for the next step, built from gradients up to this one.
        L = shampoo_beta * L + (1 - shampoo_beta) * (G @ G.T)
        R = shampoo_beta * R + (1 - shampoo_beta) * (G.T @ G)
        if k == 1:
            QL = torch.linalg.eigh(L).eigenvectors.flip(-1)
            QR = torch.linalg.eigh(R).eigenvectors.flip(-1)
            V = (1 - b2) * (QL.T @ G @ QR) ** 2  # V as if this basis had been used from the start
        elif k % freq == 0:
            QL, row_order = _refresh(L, QL, power_iter_steps)
            QR, col_order = _refresh(R, QR, power_iter_steps)
            V = V[row_order, :][:, col_order]
    return p


def random_grads(shape, steps=STEPS, seed=3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(steps)]


def run_soap(p0, grads, **kwargs):
    p = torch.nn.Parameter(p0.clone())
    opt = SOAP([p], **{"weight_decay": 0.0, **kwargs})  # the reference's default, not SOAP's 0.01
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p, opt


CASES = {
    "defaults": dict(),
    "freq3": dict(precondition_frequency=3),
    "freq3_two_power_steps": dict(precondition_frequency=3, power_iter_steps=2),
    "max_update_rms": dict(max_update_rms=0.05),
    "l2_no_bias_correction": dict(weight_decay=0.1, use_decoupled_weight_decay=False, correct_bias=False),
    "decoupled_wd_betas": dict(weight_decay=0.1, betas=(0.8, 0.9), shampoo_beta=0.7),
}
_REF_NAMES = dict(weight_decay="wd", use_decoupled_weight_decay="decoupled", precondition_frequency="freq", max_update_rms="max_rms")


@pytest.mark.parametrize("shape", [(6, 4), (3, 5)])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_loop_fp64(case, shape):
    kwargs = CASES[case]
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    grads = random_grads(shape)
    ref_kwargs = {_REF_NAMES.get(k, k): v for k, v in kwargs.items()}
    want = soap_reference(p0, grads, lr=0.01, **ref_kwargs)
    got, _ = run_soap(p0, grads, lr=0.01, **kwargs)
    torch.testing.assert_close(got.detach(), want, **TOL)
    assert not torch.allclose(got.detach(), p0, atol=1e-3)  # it really moved


def test_fp32_parameters_match_fp64_reference_loosely():
    """Square, so no eigenspace is degenerate and fp32 rounding cannot pick a different basis."""
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    grads = random_grads((5, 5))
    want = soap_reference(p0, grads, lr=0.01, freq=2)
    got, opt = run_soap(p0.float(), [g.float() for g in grads], lr=0.01, precondition_frequency=2)
    assert opt.state[got]["L"].dtype == torch.float32
    torch.testing.assert_close(got.detach().double(), want, atol=1e-4, rtol=0)


def test_reduces_to_adamw_when_gradients_are_diagonal():
    """Diagonal gradients keep L and R diagonal, so the eigenbasis is a signed permutation and SOAP is AdamW."""
    gen = torch.Generator().manual_seed(1)
    p0 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    grads = []
    for _ in range(STEPS):
        g = torch.zeros(5, 3, dtype=torch.float64)
        g[range(3), range(3)] = torch.randn(3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 3.0, 9.0], dtype=torch.float64)
        grads.append(g)
    settings = dict(lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours, _ = run_soap(p0, grads, precondition_frequency=2, **settings)
    theirs = torch.nn.Parameter(p0.clone())
    adamw = torch.optim.AdamW([theirs], **settings)
    for g in grads:
        theirs.grad = g.clone()
        adamw.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), atol=1e-12, rtol=0)


def test_first_step_eigh_basis_diagonalises_the_factors():
    gen = torch.Generator().manual_seed(2)
    p = torch.nn.Parameter(torch.randn(6, 4, generator=gen, dtype=torch.float64))
    opt = SOAP([p], lr=0.01)
    p.grad = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    opt.step()
    state = opt.state[p]
    for factor, q in ((state["L"], state["Q_L"]), (state["R"], state["Q_R"])):
        torch.testing.assert_close(q.T @ q, torch.eye(q.shape[0], dtype=q.dtype), atol=1e-12, rtol=0)
        d = q.T @ factor @ q
        off = d - torch.diag(torch.diagonal(d))
        assert off.abs().max() < 1e-12
        diag = torch.diagonal(d)
        assert torch.all(diag[:-1] >= diag[1:] - 1e-12)  # largest eigenvalue first
    torch.testing.assert_close(state["L"], 0.05 * p.grad @ p.grad.T, atol=1e-14, rtol=0)


def test_basis_refreshes_only_on_frequency_steps():
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    opt = SOAP([p], lr=0.01, precondition_frequency=3)
    bases = []
    for g in random_grads((4, 3), steps=4):
        p.grad = g
        opt.step()
        bases.append(opt.state[p]["Q_L"].clone())
    assert torch.equal(bases[0], bases[1])  # step 2: no refresh
    assert not torch.allclose(bases[1], bases[2])  # step 3: refreshed
    assert torch.equal(bases[2], bases[3])


def test_max_update_rms_bounds_the_applied_update():
    p = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    opt = SOAP([p], lr=0.5, max_update_rms=0.1, weight_decay=0.0)
    for g in random_grads((6, 4), steps=3):
        before = p.detach().clone()
        p.grad = g
        opt.step()
        rms = ((before - p.detach()) / 0.5).square().mean().sqrt().item()
        assert rms <= 0.1 + 1e-9
        assert rms > 0.09  # Adam-like steps have RMS near 1, so the clip is active


def test_group_hyperparameters_are_read_at_step_time():
    """An LR scheduler rewrites lr every step, and groups carry bookkeeping keys that SOAP must ignore."""
    gen = torch.Generator().manual_seed(4)
    p0 = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    grads = random_grads((3, 5))
    schedule = [0.01 * (1 - k / 20) for k in range(STEPS)]
    p = torch.nn.Parameter(p0.clone())
    group = dict(params=[p], param_names=["w"], max_lr=0.01, min_lr=0.0, lr_mult=1.0, wd_mult=1.0, optimizer="soap")
    opt = SOAP([group], lr=1.0, weight_decay=0.1)
    for k, g in enumerate(grads):
        opt.param_groups[0]["lr"] = schedule[k]
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(p.detach(), soap_reference(p0, grads, lr=schedule, wd=0.1), **TOL)


def test_l2_does_not_touch_the_gradient_and_main_grad_wins():
    p = torch.nn.Parameter(torch.randn(3, 3, dtype=torch.float64))
    p.main_grad = torch.randn(3, 3, dtype=torch.float64)
    p.grad = torch.full((3, 3), 1e6, dtype=torch.float64)
    before = p.main_grad.clone()
    p0 = p.detach().clone()
    SOAP([p], lr=0.01, weight_decay=0.5, use_decoupled_weight_decay=False).step()
    assert torch.equal(p.main_grad, before)
    torch.testing.assert_close(p.detach(), soap_reference(p0, [before], lr=0.01, wd=0.5, decoupled=False), **TOL)


def test_init_state_creates_all_state_and_matches_lazy_state():
    params = [torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64)) for _ in range(2)]
    eager = SOAP(params, lr=0.01)
    eager.init_state()
    for p in params:
        state = eager.state[p]
        assert set(state) == STATE_KEYS
        assert state["L"].shape == (4, 4) and state["R"].shape == (3, 3) and state["exp_avg_sq"].shape == (4, 3)
        assert float(state["step"]) == 0
    assert len(eager.state_dict()["state"]) == 2
    lazy_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    lazy = SOAP(lazy_params, lr=0.01)
    for g in random_grads((4, 3), steps=3):
        for a, b in zip(params, lazy_params):
            a.grad, b.grad = g, g.clone()
        eager.step()
        lazy.step()
    assert all(torch.equal(a, b) for a, b in zip(params, lazy_params))


def test_bf16_parameter_keeps_fp32_state():
    p = torch.nn.Parameter(torch.randn(4, 3).bfloat16())
    opt = SOAP([p], lr=0.01)
    p.grad = torch.randn(4, 3).bfloat16()
    opt.step()
    assert p.dtype == torch.bfloat16 and opt.state[p]["exp_avg"].dtype == torch.float32
    assert torch.isfinite(p.float()).all()


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), ()])
def test_non_matrix_parameters_raise_config_error(shape):
    with pytest.raises(ConfigError, match="param.ndim"):
        SOAP([torch.nn.Parameter(torch.zeros(shape))], lr=0.01)


@pytest.mark.parametrize(
    "kwargs",
    [dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(shampoo_beta=1.0), dict(precondition_frequency=0), dict(precondition_frequency=1.5),
     dict(max_update_rms=-1.0), dict(power_iter_steps=0), dict(weight_decay=-0.1)],
)
def test_bad_hyperparameters_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        SOAP([torch.nn.Parameter(torch.zeros(2, 2))], **{"lr": 0.01, **kwargs})


# ---- registry entry -------------------------------------------------------------------------------


def test_config_to_kwargs_maps_every_field():
    cfg = OptimizerConfig(
        optimizer="soap", lr=2e-3, adam_beta1=0.8, adam_beta2=0.9, adam_eps=1e-7, soap_shampoo_beta=0.9,
        soap_precondition_frequency=5, soap_max_update_rms=1.5, soap_correct_bias=False, weight_decay=0.2,
        decoupled_weight_decay=False,
    )
    kwargs = soap_config_to_kwargs(cfg, ProcessGroupCollection())
    assert kwargs == dict(
        lr=2e-3, betas=(0.8, 0.9), eps=1e-7, shampoo_beta=0.9, precondition_frequency=5, max_update_rms=1.5,
        correct_bias=False, weight_decay=0.2, use_decoupled_weight_decay=False,
    )
    group = SOAP([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs).param_groups[0]
    assert all(group[k] == v for k, v in kwargs.items())


def test_default_overrides_route_what_soap_cannot_handle_to_the_scalar_optimizer():
    overrides = soap_default_param_overrides(OptimizerConfig(optimizer="soap", lr=1e-3, muon_scalar_optimizer="lion"))
    (key, value), = overrides.items()
    assert value == {"optimizer": "lion"}
    matrix, bias, conv = torch.nn.Parameter(torch.zeros(4, 4)), torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2, 2, 3))
    embedding, output = torch.nn.Parameter(torch.zeros(8, 4)), torch.nn.Parameter(torch.zeros(8, 4))
    embedding.is_embedding_or_output = True
    output.is_embedding_or_output_parameter = True
    opted_out = torch.nn.Parameter(torch.zeros(4, 4))
    opted_out.use_muon = False  # a Muon flag; SOAP ignores it
    assert [key.matches(x, "n") for x in (matrix, bias, conv, embedding, output, opted_out)] == [False, True, True, True, True, False]
    assert is_soap_excluded(bias) and not is_soap_excluded(matrix)


def test_registered_entry_builds_soap_and_inits_state():
    from megatron_opt.emerging.registry import get_emerging_optimizer_entry

    register_lion_and_soap()
    entry = get_emerging_optimizer_entry("soap")
    assert entry.optimizer_cls is SOAP
    p = torch.nn.Parameter(torch.ones(3, 2))
    opt = entry.optimizer_cls([p], **entry.config_to_kwargs(OptimizerConfig(optimizer="soap", lr=1e-3), ProcessGroupCollection()))
    entry.init_state_fn(opt)
    assert set(opt.state[p]) == STATE_KEYS
