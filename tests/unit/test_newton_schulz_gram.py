"""Gram-space Newton–Schulz (``muon_ns_algorithm="gram"``): the same polynomial as the plain loop, its fp32
accuracy against a float64 oracle, where it is used, and the block products it is built from."""

from __future__ import annotations

import pytest
import torch

from megatron_opt.emerging import TensorParallelMuon
from megatron_opt.emerging.newton_schulz import orthogonalize
from megatron_opt.emerging.newton_schulz_gram import GramSchedule, default_restarts, gram_iterate, segments
from megatron_opt.emerging.symmetric_blocks import commuting_product
from megatron_opt.ns_coefficients import coefficients_for_steps, get_supported_coefficient_types


def plain_loop(x: torch.Tensor, triples) -> torch.Tensor:
    """Textbook NS on a normalized, already oriented (rows <= cols) matrix or batch."""
    for a, b, c in triples:
        A = x @ x.mT
        x = a * x + (b * A + c * (A @ A)) @ x
    return x


def normalized(x: torch.Tensor) -> torch.Tensor:
    return x / x.square().sum(dim=(-2, -1), keepdim=True).sqrt()


def illconditioned(m: int, n: int, seed: int) -> torch.Tensor:
    """float64, Frobenius norm 1, singular values log-spaced over 1e-6..1."""
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, m, dtype=torch.float64, generator=gen))
    V, _ = torch.linalg.qr(torch.randn(n, m, dtype=torch.float64, generator=gen))
    return normalized(U @ torch.diag(torch.logspace(-6, 0, m, dtype=torch.float64)) @ V.mT)


@pytest.mark.parametrize("coefficient_type,steps", [("simple", 5), ("polar_express", 8), ("cubic5", 5), ("quintic", 7)])
@pytest.mark.parametrize("restarts", [(), (2,), (3,), (1, 2, 3, 4)])
@pytest.mark.parametrize("shape,split_rows", [((37, 90), 2), ((21, 60), 10**9), ((3, 21, 60), 4), ((64, 64), 8)])
def test_same_polynomial_as_the_plain_loop_in_float64(coefficient_type, steps, restarts, shape, split_rows):
    """In exact arithmetic the Gram form is the plain iteration; float64 shows it to 1e-11 (blocks, batches, odd sizes)."""
    x = normalized(torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    triples = coefficients_for_steps(coefficient_type, steps)
    restarts = tuple(r for r in restarts if r < steps)
    out = gram_iterate(x.clone(), triples, restarts, None, split_rows)
    torch.testing.assert_close(out, plain_loop(x, triples), atol=1e-11, rtol=0)


def _errors(y: torch.Tensor, oracle: torch.Tensor):
    d = y.double() - oracle
    return d.abs().max().item(), (d.norm() / oracle.norm()).item()


@pytest.mark.parametrize("coefficient_type,steps", [(t, 5) for t in get_supported_coefficient_types() if t != "custom"]
                         + [("polar_express", 8), ("quintic", 10)])
@pytest.mark.parametrize("kind", ["random", "illconditioned"])
def test_fp32_error_within_4x_of_the_standard_loop_and_far_below_bf16(coefficient_type, steps, kind):
    """The accuracy we state in docs/muon.md, at 256x768 (its large-shape rows need minutes), for every
    coefficient set with the default restarts: fp32 error against the same polynomial in float64 is <= 4x
    the standard fp32 loop's, max and Frobenius."""
    m, n = 256, 768
    x = (torch.randn(m, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) if kind == "random"
         else illconditioned(m, n, seed=1))
    x = normalized(x)
    triples = coefficients_for_steps(coefficient_type, steps)
    oracle = plain_loop(x, triples)
    x32 = x.float()
    std_max, std_fro = _errors(orthogonalize(x32, triples), oracle)
    gram = GramSchedule(restart_after=default_restarts(steps))
    gram_max, gram_fro = _errors(orthogonalize(x32, triples, gram=gram), oracle)
    assert gram_max <= 4 * std_max and gram_fro <= 4 * std_fro, (gram_max / std_max, gram_fro / std_fro)
    assert gram_max < max(1e-5, 2 * std_max)  # bf16 NS, torch.optim.Muon's and Megatron's default, is ~1e-2 off here


def test_the_restart_is_what_keeps_ill_conditioned_input_accurate():
    """Without a restart the fp32 error on ill-conditioned input grows by orders of magnitude (why the default restarts)."""
    x = illconditioned(256, 768, seed=2)
    triples = coefficients_for_steps("simple", 5)
    oracle = plain_loop(x, triples)
    x32 = x.float()
    std_max, _ = _errors(orthogonalize(x32, triples), oracle)
    no_restart_max, _ = _errors(orthogonalize(x32, triples, gram=GramSchedule(restart_after=())), oracle)
    default_max, _ = _errors(orthogonalize(x32, triples, gram=GramSchedule()), oracle)
    assert no_restart_max > 10 * std_max
    assert default_max < no_restart_max / 5


def test_used_only_from_an_aspect_ratio_of_one_and_a_half():
    triples = coefficients_for_steps("simple", 5)
    gen = torch.Generator().manual_seed(4)
    square, wide, tall = torch.randn(60, 80, generator=gen), torch.randn(40, 60, generator=gen), torch.randn(90, 60, generator=gen)
    gram = GramSchedule()
    assert torch.equal(orthogonalize(square, triples, gram=gram), orthogonalize(square, triples))  # 1.33:1: plain loop
    for x in (wide, tall):  # 1.5:1 either way round
        out = orthogonalize(x, triples, gram=gram)
        assert not torch.equal(out, orthogonalize(x, triples))
        torch.testing.assert_close(out, orthogonalize(x, triples), atol=5e-6, rtol=0)
    assert gram.applies_to(40, 60) and not gram.applies_to(60, 40) and not gram.applies_to(60, 80)


def test_restart_schedule():
    assert default_restarts(5) == (3,)
    assert default_restarts(8) == (3, 6)
    assert default_restarts(3) == ()
    triples = coefficients_for_steps("simple", 5)
    assert [len(s) for s in segments(triples, (3,))] == [3, 2]
    assert [len(s) for s in segments(triples, ())] == [5]
    assert [len(s) for s in segments(triples, (1, 2, 3, 4, 9))] == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("shape,split_rows", [((1, 7, 7), 2), ((37, 37), 2), ((2, 50, 50), 8), ((300, 300), 256), ((64, 64), 10**9)])
def test_commuting_product_equals_the_full_gemm(shape, split_rows):
    """For polynomials in one symmetric matrix (which commute) the upper panels + mirror give X·Y."""
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(*shape, dtype=torch.float64, generator=gen)
    S = g @ g.mT / shape[-1]
    X, Y = 2 * S + S @ S, S @ S @ S - S
    out = S.clone()  # what it accumulates onto is symmetric too (Q or R in the iteration)
    expected = 0.5 * out + X @ Y
    commuting_product(X, Y, out, 0.5, split_rows)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


def test_muon_with_gram_ns_steps_like_the_standard_loop():
    """Through the optimizer (fp32 NS): the weights follow the standard run to fp32 rounding, never bitwise."""
    gen = torch.Generator().manual_seed(6)
    weights = [torch.randn(48, 96, generator=gen), torch.randn(96, 32, generator=gen), torch.randn(40, 40, generator=gen)]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(3)]

    def train(**kwargs):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = TensorParallelMuon(params, lr=0.02, fp32_matmul_prec="highest", coefficient_type="simple", **kwargs)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        return [p.detach() for p in params]

    standard, gram = train(), train(ns_algorithm="gram")
    assert not torch.equal(standard[0], gram[0]) and not torch.equal(standard[1], gram[1])
    assert torch.equal(standard[2], gram[2])  # square: plain loop either way
    for s, g in zip(standard, gram):
        torch.testing.assert_close(g, s, atol=1e-6, rtol=0)


def test_use_syrk_forces_symmetric_blocks_on_any_device():
    """muon_use_syrk lowers the split threshold to 256 rows on every device; on CPU that is already the default."""
    params = [torch.nn.Parameter(torch.randn(4, 4))]
    assert TensorParallelMuon(params, use_syrk=True).symmetric_min_rows == 256
    assert TensorParallelMuon(params).symmetric_min_rows is None  # the per-device default
