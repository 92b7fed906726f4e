"""ZeRO-1 DistributedOptimizer and LayerWiseDistributedOptimizer against undistributed runs (torchrun, gloo).

Each case trains a tiny GPT for 10 steps on the same global batches (one micro-batch of 2 sequences
per DP rank, so DP=1 accumulates the gradients in the same order the DP=2 all-reduce sums them).

Tolerances:
* parameters, losses: IDENTICAL (bitwise) for Adam fp32/bf16, Lion, layer-wise Muon (standard and Gram NS) and SOAP fp32/bf16 and
  TP=2×DP=2 vs TP=2×DP=1, with clipping off (see the worker for why);
* grad norm: relative 1e-6 (the sharded norm sums per-piece norms in another order; seen ≤ 2e-7);
* SGD with clip_grad=0.5 active (coefficient from that norm): parameters relative 1e-5 (seen ~6e-7);
* overlap_grad_reduce + overlap_param_gather on == off: identical.
"""

from __future__ import annotations

import math

import pytest
import torch

from torchrun_helpers import WORKERS, run_torchrun

pytestmark = pytest.mark.functional

WORKER = WORKERS / "distopt_worker.py"
NORM_RTOL = 1e-6
CLIPPED_RTOL = 1e-5


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    out = tmp_path_factory.mktemp("distopt_two")
    run_torchrun(WORKER, 2, ["--suite", "two", "--out", out], timeout=120)
    return [torch.load(out / f"two_rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    out = tmp_path_factory.mktemp("distopt_four")
    run_torchrun(WORKER, 4, ["--suite", "four", "--out", out], timeout=120)
    return [torch.load(out / f"four_rank{r}.pt", weights_only=False) for r in range(4)]


def max_rel(actual: dict, expected: dict) -> float:
    assert set(actual) == set(expected)
    return max(float((actual[n] - expected[n]).abs().max() / expected[n].abs().max().clamp_min(1e-12)) for n in expected)


def assert_identical(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for name in expected:
        assert torch.equal(actual[name], expected[name]), f"{name}: max abs diff {(actual[name] - expected[name]).abs().max():.3e}"


def assert_norms_close(actual, expected) -> None:
    assert len(actual) == len(expected) > 0
    for a, e in zip(actual, expected):
        assert math.isfinite(a) and a > 0
        assert a == pytest.approx(e, rel=NORM_RTOL)


def check_case(results, case: str, expected_leaves, identical: bool = True) -> None:
    rank0, rank1 = results
    layout = "layer_wise" if ("muon" in case or "soap" in case) else "zero1"
    run, ref = rank0[f"{case}/{layout}"], rank0[f"{case}/ref"]
    assert run["leaf_types"] == expected_leaves
    assert len(run["params"]) == len(ref["params"]) == 10
    for step, (p, p_ref) in enumerate(zip(run["params"], ref["params"])):
        if identical:
            assert_identical(p, p_ref)
        else:
            assert max_rel(p, p_ref) < CLIPPED_RTOL, f"step {step}"
    assert run["losses"] == ref["losses"] if identical else run["losses"] == pytest.approx(ref["losses"], rel=1e-6)
    assert_norms_close(run["norms"], ref["norms"])
    # the params moved, and both DP ranks hold the same params after every step
    assert max_rel(run["final"], ref["params"][0]) > 1e-3
    other = rank1[f"{case}/{layout}"]
    for p0, p1 in zip(run["params"], other["params"]):
        assert_identical(p1, p0)


def test_zero1_adam_fp32_dp2_equals_dp1(two):
    check_case(two, "adam_fp32", ["DistributedOptimizer"])
    # and equals DP=2 without sharding
    assert_identical(two[0]["adam_fp32/zero1"]["final"], two[0]["adam_fp32/dp2_plain"]["final"])


def test_zero1_adam_bf16_main_shards_dp2_equals_dp1(two):
    check_case(two, "adam_bf16", ["DistributedOptimizer"])


def test_zero1_lion_dp2_equals_dp1(two):
    check_case(two, "lion_fp32", ["DistributedOptimizer"])


def test_zero1_clipping_uses_global_norm(two):
    check_case(two, "sgd_clip", ["DistributedOptimizer"], identical=False)
    assert min(two[0]["sgd_clip/ref"]["norms"]) > 0.5  # clipping was active every step


def test_overlap_flags_do_not_change_numbers(two):
    for prefix in ("overlap", "muon_overlap"):
        on, off = two[0][f"{prefix}/on"], two[0][f"{prefix}/off"]
        assert on["losses"] == off["losses"] and on["norms"] == off["norms"]
        assert_identical(on["final"], off["final"])
        assert_identical(two[1][f"{prefix}/on"]["final"], on["final"])


def test_zero1_state_dict_round_trip_and_named_state(two):
    rank0 = two[0]
    resumed, full = rank0["adam_fp32/resumed"], rank0["adam_fp32/zero1"]
    assert len(resumed["params"]) == 5
    for p, p_full in zip(resumed["params"], full["params"][5:]):
        assert_identical(p, p_full)
    named, ref = rank0["adam_fp32/named_state"], rank0["adam_fp32/ref_named_state"]
    assert set(named) == set(ref)
    for name in ref:
        assert set(named[name]) == set(ref[name]) == {"step", "exp_avg", "exp_avg_sq"}
        for key in ref[name]:
            assert torch.equal(named[name][key], ref[name][key]), (name, key)
    reloaded = rank0["adam_fp32/named_state_reloaded"]
    for name in named:
        for key in named[name]:
            assert torch.equal(reloaded[name][key], named[name][key]), (name, key)


def test_layer_wise_muon_fp32_dp2_equals_dp1(two):
    check_case(two, "muon_fp32", ["LayerWiseDistributedOptimizer", "DistributedOptimizer"])


def test_layer_wise_muon_bf16_dp2_equals_dp1(two):
    check_case(two, "muon_bf16", ["LayerWiseDistributedOptimizer", "DistributedOptimizer"])


def test_layer_wise_muon_gram_newton_schulz_dp2_equals_dp1(two):
    """``muon_ns_algorithm="gram"``: bitwise DP=2 == DP=1 too, and a different (fp32-rounding) path than the standard loop."""
    check_case(two, "muon_gram_fp32", ["LayerWiseDistributedOptimizer", "DistributedOptimizer"])
    gram, standard = two[0]["muon_gram_fp32/ref"], two[0]["muon_fp32/ref"]
    assert gram["losses"] != standard["losses"]
    assert gram["losses"] == pytest.approx(standard["losses"], rel=1e-5)


@pytest.mark.parametrize("case", ["soap_fp32", "soap_bf16"])
def test_layer_wise_soap_dp2_equals_dp1(two, case):
    """``--optimizer soap --use-distributed-optimizer`` resolves to the layer-wise optimizer (asserted in
    the worker); each matrix is preconditioned whole on its owner rank from the all-reduced gradient, so
    eigh/QR see the same input as in one process and the result is bitwise equal."""
    check_case(two, case, ["LayerWiseDistributedOptimizer", "DistributedOptimizer"])


@pytest.mark.parametrize("case", ["muon", "adam"])
def test_tp2_dp2_equals_tp2_dp1(four, case):
    assert sorted((r["tp_rank"], r["dp_rank"]) for r in four) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for rank in four:
        run = rank[f"{case}/tp2dp2"]
        ref = four[rank["tp_rank"]][f"{case}/ref"]  # ranks 0 and 1 ran TP=2 x DP=1 (tp_rank = rank)
        assert run["losses"] == ref["losses"]
        assert_norms_close(run["norms"], ref["norms"])
        for p, p_ref in zip(run["params"], ref["params"]):
            assert_identical(p, p_ref)
        assert max_rel(run["final"], ref["params"][0]) > 1e-3
