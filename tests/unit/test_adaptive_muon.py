"""TensorParallelAdaptiveMuon against a plain single-tensor loop written here, per moment2 method."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_opt.emerging import TensorParallelAdaptiveMuon
from megatron_opt.errors import ConfigError
from megatron_opt.ns_coefficients import coefficients_for_steps


def reference_ns(x, triples):
    X = x.double()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / max(X.norm().item(), 1e-7)
    for a, b, c in triples:
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def reference_adaptive_muon(w, grads, *, method, lr, wd, mu, nesterov, beta2, eps, triples, scale):
    w = w.double().clone()
    rows, cols = w.shape
    m = torch.zeros_like(w)
    v = None
    for g in grads:
        g = g.double()
        w = w * (1 - lr * wd)
        m = mu * m + (1 - mu) * g
        c = (1 - mu) * g + mu * m if nesterov else m
        o = reference_ns(c, triples)
        if method == "adamuon":
            v = (1 - beta2) * o**2 if v is None else beta2 * v + (1 - beta2) * o**2
            u = o / (v.sqrt() + eps)
        elif method == "normuon":
            per_row = rows >= cols
            mean_sq = (o**2).mean(dim=1 if per_row else 0, keepdim=True)
            v = (1 - beta2) * mean_sq if v is None else beta2 * v + (1 - beta2) * mean_sq
            u = o / v.clamp(min=eps).sqrt()
            u = u * o.norm() / max(u.norm().item(), eps)
        else:  # namo
            c_sq = float((c**2).sum())
            v = (1 - beta2) * c_sq if v is None else beta2 * v + (1 - beta2) * c_sq
            u = o * math.sqrt(c_sq) / (math.sqrt(v) + eps)
        w = w - lr * scale * u
    return w


@pytest.mark.parametrize("method", ["adamuon", "normuon", "namo"])
@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
def test_matches_reference_loop(method, shape):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(shape, generator=gen)
    grads = [torch.randn(shape, generator=gen) for _ in range(6)]
    p = torch.nn.Parameter(w0.clone())
    opt = TensorParallelAdaptiveMuon(
        [p], moment2_method=method, beta2=0.9, eps=1e-8, lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.1,
        scale_mode="spectral", extra_scale_factor=0.2, fp32_matmul_prec="highest",
    )
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = reference_adaptive_muon(w0, grads, method=method, lr=0.01, wd=0.1, mu=0.9, nesterov=True, beta2=0.9,
                                       eps=1e-8, triples=coefficients_for_steps("quintic", 5), scale=0.2 * math.sqrt(max(shape)))
    torch.testing.assert_close(p.detach().double(), expected, atol=5e-5, rtol=1e-5)
    # The Muon scale is applied once: scaling it twice would move the weights by sqrt(40) times more.
    assert (p.detach().double() - w0.double()).abs().max().item() < 10 * (expected - w0.double()).abs().max().item()


def test_state_shapes_and_init_state():
    tall, wide = torch.nn.Parameter(torch.randn(12, 4)), torch.nn.Parameter(torch.randn(4, 12))
    for method, expected in [("adamuon", [(12, 4), (4, 12)]), ("normuon", [(12, 1), (1, 12)]), ("namo", [(), ()])]:
        opt = TensorParallelAdaptiveMuon([tall, wide], moment2_method=method)
        opt.init_state()
        assert [tuple(opt.state[p]["moment2_buffer"].shape) for p in (tall, wide)] == expected
        assert opt.param_groups[0]["beta2"] == 0.95 and opt.param_groups[0]["eps"] == 1e-8


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(moment2_method="adam"), "moment2_method"),
        (dict(moment2_method="namo", use_decoupled_weight_decay=False), "use_decoupled_weight_decay"),
        (dict(beta2=1.0), "beta2"),
        (dict(num_ns_steps=0), "num_ns_steps"),
    ],
)
def test_bad_values_raise_config_error(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        TensorParallelAdaptiveMuon([torch.nn.Parameter(torch.randn(4, 4))], **kwargs)


def test_l2_decay_with_adamuon_is_added_to_a_copy_of_the_gradient():
    p = torch.nn.Parameter(torch.randn(6, 6))
    g = torch.randn(6, 6)
    p.grad = g.clone()
    TensorParallelAdaptiveMuon([p], use_decoupled_weight_decay=False, weight_decay=0.5, fp32_matmul_prec="highest").step()
    torch.testing.assert_close(p.grad, g, atol=0, rtol=0)
