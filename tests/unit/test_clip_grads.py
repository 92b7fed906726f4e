"""Grad norm, clipping and zero counting against torch.nn.utils and plain loops."""

import math

import pytest
import torch

from megatron_opt.clip_grads import (
    clip_grad_by_total_norm_fp32,
    count_zeros_fp32,
    get_grad_norm_fp32,
    grad_norm_power_fp32,
    norm_from_powers,
    param_is_not_shared,
    param_is_not_tensor_parallel_duplicate,
)


def _grads(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(7, 5, generator=g), torch.randn(13, generator=g) * 3, torch.randn(2, 3, 4, generator=g)]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
def test_grad_norm_matches_torch_total_norm(norm_type):
    grads = _grads()
    expected = torch.nn.utils.get_total_norm(grads, norm_type=norm_type).item()
    assert get_grad_norm_fp32(grads, norm_type) == pytest.approx(expected, rel=1e-6)


def test_norm_of_no_grads_is_zero_and_nones_are_skipped():
    assert get_grad_norm_fp32([]) == 0.0
    grads = _grads()
    assert get_grad_norm_fp32([None] + grads) == get_grad_norm_fp32(grads)


def test_powers_combine_into_the_norm_of_the_union():
    a, b = _grads(1), _grads(2)
    combined = norm_from_powers([grad_norm_power_fp32(a), grad_norm_power_fp32(b)])
    expected = torch.nn.utils.get_total_norm(a + b).item()
    assert combined == pytest.approx(expected, rel=1e-6)
    inf_combined = norm_from_powers([grad_norm_power_fp32(a, math.inf), grad_norm_power_fp32(b, math.inf)], math.inf)
    assert inf_combined == max(g.abs().max().item() for g in a + b)


def test_clip_matches_torch_clip_grad_norm():
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in _grads()]
    ref = [torch.nn.Parameter(torch.zeros_like(g)) for g in _grads()]
    for p, r, g in zip(params, ref, _grads()):
        p.grad, r.grad = g.clone(), g.clone()
    torch_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm=1.5).item()
    grads = [p.grad for p in params]
    norm = get_grad_norm_fp32(grads)
    clip_grad_by_total_norm_fp32(grads, 1.5, norm)
    assert norm == pytest.approx(torch_norm, rel=1e-6)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-6, atol=0)
    assert get_grad_norm_fp32(grads) == pytest.approx(1.5, rel=1e-5)


def test_clip_leaves_small_grads_untouched():
    grads = _grads()
    before = [g.clone() for g in grads]
    clip_grad_by_total_norm_fp32(grads, max_norm=1e6, total_norm=get_grad_norm_fp32(grads))
    assert all(torch.equal(a, b) for a, b in zip(grads, before))


def test_count_zeros_matches_plain_loop():
    grads = _grads()
    grads[0][2:4] = 0.0
    grads[2][1, 1] = 0.0
    expected = sum(int((g == 0).sum()) for g in grads)
    assert expected == 2 * 5 + 4
    assert count_zeros_fp32(grads) == float(expected)
    assert count_zeros_fp32([]) == 0.0


def test_param_filters():
    p = torch.nn.Parameter(torch.zeros(2))
    assert param_is_not_shared(p)
    p.shared = True
    assert not param_is_not_shared(p)
    p.shared = False
    assert param_is_not_shared(p)
    # Single process: TP rank 0, so replicated params count, and TP shards always count.
    assert param_is_not_tensor_parallel_duplicate(p, None)
    p.tensor_model_parallel = True
    assert param_is_not_tensor_parallel_duplicate(p, None)
