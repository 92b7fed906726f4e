"""Newton–Schulz against independent oracles: the SVD polar factor and a plain per-step loop."""

from __future__ import annotations

import pytest
import torch

from megatron_opt.emerging.newton_schulz import SYMMETRIC_MIN_ROWS, fp32_matmul_precision, newton_schulz, newton_schulz_tp, orthogonalize
from megatron_opt.errors import ConfigError
from megatron_opt.ns_coefficients import COEFFICIENT_SETS, coefficients_for_steps, get_supported_coefficient_types


def reference_ns(x: torch.Tensor, triples) -> torch.Tensor:
    """The textbook loop, in float64, written independently of the library."""
    X = x.double()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / max(X.norm().item(), 1e-7)
    for a, b, c in triples:
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return (X.T if tall else X).float()


def random_matrix(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(48, 32), (32, 80)])
def test_polar_express_converges_to_svd_polar_factor(shape):
    x = random_matrix(*shape, seed=1)
    u, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    out = newton_schulz(x, 16, "polar_express", precision="highest")
    # fp32 iteration; the exact polar factor has entries of size ~0.1-0.3.
    torch.testing.assert_close(out.double(), u @ vh, atol=2e-5, rtol=0)


@pytest.mark.parametrize("coefficient_type", [t for t in get_supported_coefficient_types() if t != "custom"])
@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_every_coefficient_set_matches_plain_loop(coefficient_type, shape):
    steps = COEFFICIENT_SETS[coefficient_type].required_steps or 7  # 7 > len(list) for most sets: cycle/repeat_last
    x = random_matrix(*shape, seed=2)
    expected = reference_ns(x, coefficients_for_steps(coefficient_type, steps))
    out = newton_schulz(x, steps, coefficient_type, precision="highest")
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


def test_custom_coefficients_cycle():
    triples = [(3.0, -3.2, 1.2), (2.0, -1.5, 0.5)]
    x = random_matrix(20, 30, seed=3)
    expected = reference_ns(x, [triples[i % 2] for i in range(5)])
    out = newton_schulz(x, 5, "custom", custom_coefficients=triples, precision="highest")
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


def test_batched_equals_per_matrix():
    x = torch.randn(5, 24, 56, generator=torch.Generator().manual_seed(4))
    out = newton_schulz(x, 5, "quintic", precision="highest")
    for i in range(5):
        torch.testing.assert_close(out[i], newton_schulz(x[i], 5, "quintic", precision="highest"), atol=1e-6, rtol=1e-6)
    tall = x.mT.contiguous()
    torch.testing.assert_close(newton_schulz(tall, 5, precision="highest"), out.mT, atol=1e-6, rtol=1e-6)


def test_transpose_choice_does_not_change_the_result():
    x = random_matrix(40, 24, seed=5)
    a = newton_schulz(x, 5, "quintic", transpose=True, precision="highest")
    b = newton_schulz(x, 5, "quintic", transpose=False, precision="highest")  # iterates on the larger Gram
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bf16_precision_is_close_and_returns_fp32():
    x = random_matrix(32, 64, seed=6)
    fp32 = newton_schulz(x, 5, "quintic", precision="highest")
    bf16 = newton_schulz(x, 5, "quintic", precision="medium")
    assert bf16.dtype == torch.float32
    assert 0 < (bf16 - fp32).abs().max().item() < 0.05
    # precision=None follows torch's global setting, which the context manager sets and restores.
    before = torch.get_float32_matmul_precision()
    with fp32_matmul_precision("low"):
        assert torch.get_float32_matmul_precision() == "medium"
        torch.testing.assert_close(newton_schulz(x, 5, "quintic"), bf16, atol=0, rtol=0)
    assert torch.get_float32_matmul_precision() == before


def test_single_process_tp_modes_are_plain_ns():
    x = random_matrix(16, 24, seed=7)
    plain = newton_schulz(x, 5, precision="highest")
    for mode in ("duplicated", "distributed", "blockwise"):
        torch.testing.assert_close(newton_schulz_tp(x, 5, "quintic", None, 0, mode, precision="highest"), plain, atol=0, rtol=0)


def test_bad_input_raises():
    with pytest.raises(TypeError):
        newton_schulz(torch.randn(4), 5)
    with pytest.raises(TypeError):
        newton_schulz(torch.randn(4, 4, dtype=torch.float64), 5)
    with pytest.raises(ConfigError, match="muon_coefficient_type"):
        newton_schulz(torch.randn(4, 4), 5, "nope")
    with pytest.raises(ConfigError, match="fp32_matmul_prec"):
        newton_schulz(torch.randn(4, 4), 5, precision="fast")
    with pytest.raises(ConfigError, match="tp_mode"):
        newton_schulz_tp(torch.randn(4, 4), 5, tp_mode="sideways")


@pytest.mark.parametrize("coefficient_type,steps", [("simple", 5), ("polar_express", 8), ("cubic5", 5)])
@pytest.mark.parametrize("shape", [(37, 50), (50, 37), (3, 21, 40), (64, 64)])
def test_symmetric_block_iteration_matches_plain_loop(coefficient_type, steps, shape):
    """The 3-of-4-blocks path (used from SYMMETRIC_MIN_ROWS on) against the float64 loop, odd sizes and batches included."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(9))
    triples = coefficients_for_steps(coefficient_type, steps)
    out = orthogonalize(x, triples, symmetric_min_rows=2)
    expected = torch.stack([reference_ns(m, triples) for m in x]) if x.dim() == 3 else reference_ns(x, triples)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(out, orthogonalize(x, triples, symmetric_min_rows=10**9), atol=3e-6, rtol=0)


def test_symmetric_block_path_converges_to_svd_polar_factor_at_its_default_size():
    x = random_matrix(260, 300, seed=10)
    assert min(x.shape) >= SYMMETRIC_MIN_ROWS["cpu"]
    u, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    out = newton_schulz(x, 12, "polar_express", precision="highest")
    plain = orthogonalize(x, coefficients_for_steps("polar_express", 12), symmetric_min_rows=10**9)
    err, err_plain = (out.double() - u @ vh).abs().max().item(), (plain.double() - u @ vh).abs().max().item()
    assert err <= 1.5 * err_plain + 1e-6, (err, err_plain)  # no accuracy lost against the plain GEMM loop
