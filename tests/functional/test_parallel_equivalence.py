"""TP=2, PP=2 and DP=2 give the same losses and gradients as one process; TP=2×PP=2 trains.

Tolerances: fp32 throughout; sharding only reorders reductions, so gradients agree to a relative
max-abs error of 1e-5 (observed ~6e-7) and losses to 1e-6 relative.
"""

from __future__ import annotations

import pytest
import torch

from torchrun_helpers import WORKERS, run_torchrun

pytestmark = pytest.mark.functional

WORKER = WORKERS / "parallel_worker.py"
GRAD_RTOL = 1e-5
LOSS_RTOL = 1e-6


def load(out_dir, suite: str, nproc: int):
    return [torch.load(out_dir / f"{suite}_rank{r}.pt", weights_only=False) for r in range(nproc)]


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel_two")
    run_torchrun(WORKER, 2, ["--suite", "two", "--out", out], timeout=120)
    return load(out, "two", 2)


@pytest.fixture(scope="module")
def four_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel_four")
    run_torchrun(WORKER, 4, ["--suite", "four", "--out", out], timeout=150)
    return load(out, "four", 4)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


def assert_grads_match(actual: dict, expected: dict, rtol: float = GRAD_RTOL) -> None:
    assert set(actual) == set(expected)
    for name, grad in expected.items():
        assert actual[name].shape == grad.shape, name
        assert grad.abs().max() > 0, f"{name}: reference gradient is all zero"
        assert relative_error(actual[name], grad) < rtol, f"{name}: relative error {relative_error(actual[name], grad):.2e}"


@pytest.mark.parametrize("variant", ["gqa_tied_layernorm", "mha_untied_rmsnorm"])
def test_tp2_matches_tp1(two_rank_results, variant):
    rank0, rank1 = two_rank_results
    ref = rank0[f"tp/{variant}/ref"]
    for rank in (rank0, rank1):
        assert rank[f"tp/{variant}"]["loss"] == pytest.approx(ref["loss"], rel=LOSS_RTOL)
        assert_grads_match(rank[f"tp/{variant}"]["grads"], ref["grads"])


def test_pp2_matches_pp1_including_tied_embedding(two_rank_results):
    first, last = (r["pp"] for r in two_rank_results)
    ref = two_rank_results[0]["pp/ref"]
    assert (first["pp_rank"], last["pp_rank"]) == (0, 1)
    assert first["loss"] == pytest.approx(ref["loss"], rel=LOSS_RTOL)
    assert last["loss"] == pytest.approx(ref["loss"], rel=LOSS_RTOL)
    # global layer indices in names: stage 0 holds layers 0-1, stage 1 layers 2-3
    assert "decoder.layers.1.mlp.linear_fc1.weight" in first["grads"] and "decoder.layers.2.mlp.linear_fc1.weight" in last["grads"]
    assert last["shared"] == ["embedding.word_embeddings.weight"] and first["shared"] == []
    merged = {**last["grads"], **first["grads"]}
    assert_grads_match(merged, ref["grads"])
    # the last stage's shared copy received the same (summed) tied-embedding gradient
    tied = "embedding.word_embeddings.weight"
    assert relative_error(last["grads"][tied], ref["grads"][tied]) < GRAD_RTOL


@pytest.mark.parametrize("variant", ["allreduce", "overlap_buckets"])
def test_dp2_main_grad_matches_dp1(two_rank_results, variant):
    ref = two_rank_results[0]["dp/ref"]
    for rank in two_rank_results:
        result = rank[f"dp/{variant}"]
        assert result["loss"] == pytest.approx(ref["loss"], rel=LOSS_RTOL)  # DP-averaged for logging
        assert_grads_match(result["grads"], ref["grads"])
    if variant == "overlap_buckets":
        assert two_rank_results[0][f"dp/{variant}"]["num_buckets"] > 2


def test_dp2_reduce_scatter_gives_each_rank_its_reduced_shard(two_rank_results):
    ref_flat = {n: g.reshape(-1) for n, g in two_rank_results[0]["dp/ref"]["grads"].items()}
    covered = 0
    for rank in two_rank_results:
        result = rank["dp/reduce_scatter_overlap"]
        for shard_start, shard_end in result["owned"]:
            for name, (start, end) in result["slots"].items():
                lo, hi = max(start, shard_start), min(end, shard_end)
                if lo >= hi:
                    continue
                expected = ref_flat[name][lo - start: hi - start]
                assert torch.allclose(result["buffer"][lo:hi], expected, rtol=GRAD_RTOL, atol=1e-8), name
                covered += hi - lo
    assert covered == sum(g.numel() for g in ref_flat.values())  # the shards tile every gradient exactly once


def test_tp2_pp2_sgd_trains_like_one_process(four_rank_results):
    ref_losses = four_rank_results[0]["ref_losses"]
    for rank in four_rank_results:
        assert rank["losses"] == pytest.approx(ref_losses, rel=1e-4)
    losses = four_rank_results[0]["losses"]
    assert losses[-1] < losses[0] - 1.0
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    # first and last stage keep identical tied embeddings, equal to the single-process weights
    ref_weight = four_rank_results[0]["ref_word_embeddings"]
    for rank in four_rank_results:
        assert rank["word_embeddings"] is not None  # PP=2: every stage is first or last
        assert torch.allclose(rank["word_embeddings"], ref_weight, rtol=1e-4, atol=1e-5)
