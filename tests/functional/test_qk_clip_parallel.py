"""QK-clip under ZeRO-1, the layer-wise optimizer and tensor parallelism (torchrun, 2 ranks, gloo).

Tolerances:
* DP=2 (ZeRO-1 Adam bf16 with fp32 main shards; layer-wise Muon bf16) vs DP=1: parameters and losses
  bitwise identical every step: the maxima are all-reduced with MAX (exact in any order), and every
  copy (bf16 model param, fp32 main param or shard) is multiplied by the same fp32 factors;
* TP=2 vs TP=1 (fp32 SGD with momentum, GQA with one query group per TP rank): parameters relative 1e-5, losses
  relative 1e-6 (TP only reorders reductions, as in test_parallel_equivalence); the heads clipped on
  the two TP ranks add up to the heads clipped at TP=1 on every step;
* PP=2 vs PP=1 (the same SGD run, untied embeddings): the same tolerances; the two stages' clipped heads
  add up to PP=1's.
"""

from __future__ import annotations

import pytest
import torch

from test_distributed_optimizer import assert_identical, max_rel
from torchrun_helpers import WORKERS, run_torchrun

pytestmark = pytest.mark.functional


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("qk_clip")
    run_torchrun(WORKERS / "qk_clip_worker.py", 2, ["--out", out], timeout=120)
    return [torch.load(out / f"qk_rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("case", ["adam_bf16/zero1", "muon_bf16/layer_wise"])
def test_dp2_equals_dp1_bitwise_with_clipping_active(results, case):
    ref = results[0][case.split("/")[0] + "/ref"]
    assert sum(ref["clipped"]) >= len(ref["clipped"]), ref["clipped"]  # clipping really happened, most steps
    for rank in results:
        run = rank[case]
        assert run["clipped"] == ref["clipped"]
        assert run["losses"] == ref["losses"]
        for p, p_ref in zip(run["params"], ref["params"]):
            assert_identical(p, p_ref)


def test_tp2_equals_tp1_with_clipping_active(results):
    ref, unclipped = results[0]["sgd_fp32/ref"], results[0]["sgd_fp32/unclipped"]
    assert sum(ref["clipped"]) > 0
    assert max_rel(ref["final"], unclipped["final"]) > 1e-3  # the clip changed the run
    tp = [results[r]["sgd_fp32/tp2"] for r in range(2)]
    assert [a + b for a, b in zip(tp[0]["clipped"], tp[1]["clipped"])] == ref["clipped"]
    for run in tp:
        assert run["losses"] == pytest.approx(ref["losses"], rel=1e-6)
        for step, (p, p_ref) in enumerate(zip(run["params"], ref["params"])):
            assert max_rel(p, p_ref) < 1e-5, step


def test_pp2_equals_pp1_with_clipping_active(results):
    """Each stage clips the heads of its own layers; nothing crosses stages (tolerances as for TP)."""
    ref = results[0]["sgd_fp32/ref_untied"]
    assert sum(ref["clipped"]) > 0
    pp = [results[r]["sgd_fp32/pp2"] for r in range(2)]
    assert [a + b for a, b in zip(pp[0]["clipped"], pp[1]["clipped"])] == ref["clipped"]
    assert all(sum(run["clipped"]) > 0 for run in pp)  # both stages clipped heads of their own layer
    assert set(pp[0]["final"]).isdisjoint(pp[1]["final"]) and set(pp[0]["final"]) | set(pp[1]["final"]) == set(ref["final"])
    for run in pp:
        assert run["losses"] == pytest.approx(ref["losses"], rel=1e-6)
        for step, (p, p_ref) in enumerate(zip(run["params"], ref["params"])):
            assert max_rel(p, {n: p_ref[n] for n in p}) < 1e-5, step


TINY_MUON_DP2 = [
    "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
    "--micro-batch-size", "2", "--no-progress", "--optimizer", "muon", "--use-distributed-optimizer", "--bf16",
    "--lr", "2e-2", "--train-iters", "4", "--log-interval", "2", "--eval-iters", "0",
]
"""A 4-iteration layer-wise Muon bf16 run at DP=2 of the real entry point."""


def assert_log_lines_carry_max_logit(stdout: str, records: list) -> None:
    """Every log line (iterations 2 and 4) carries that iteration's metrics.jsonl maximum, as printed (3 decimals)."""
    from test_pretrain_cli import LOG_LINE

    lines = [m for m in map(LOG_LINE.match, stdout.splitlines()) if m]
    assert [int(m["it"]) for m in lines] == [2, 4], stdout
    by_iteration = {r["iteration"]: r["max_attention_logit"] for r in records}
    assert [m["max_logit"] for m in lines] == ["{:.3f}".format(by_iteration[int(m["it"])]) for m in lines]


def test_pretrain_gpt_qk_clip_flags_clip_and_report(tmp_path):
    """The real entry point: --qk-clip with layer-wise Muon bf16 at DP=2; the JSONL and the log line report it."""
    import json

    from torchrun_helpers import REPO_ROOT

    metrics = tmp_path / "m.jsonl"
    out = run_torchrun(REPO_ROOT / "training" / "pretrain_gpt.py", 2, [
        *TINY_MUON_DP2, "--qk-clip", "--qk-clip-threshold", "0.05", "--qk-clip-alpha", "0.5",
        "--metrics-file", str(metrics), "--plot-file", str(tmp_path / "p.png")], timeout=120).stdout
    records = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "train"]
    assert len(records) == 4
    assert all(r["max_attention_logit"] > 0 for r in records)
    assert sum(r["qk_clipped_heads"] for r in records) > 0, records
    assert_log_lines_carry_max_logit(out, records)

    # --log-max-attention-logit alone: the same first measurement, and the weights are never clipped, so the
    # logged maxima are those of the run without QK-clip (its losses; the clipped run's differ after step 1).
    logged = tmp_path / "log_only.jsonl"
    out = run_torchrun(REPO_ROOT / "training" / "pretrain_gpt.py", 2, [
        *TINY_MUON_DP2, "--log-max-attention-logit", "--qk-clip-threshold", "0.05",
        "--metrics-file", str(logged), "--plot-file", str(tmp_path / "p2.png")], timeout=120).stdout
    only = [r for r in map(json.loads, logged.read_text().splitlines()) if r["kind"] == "train"]
    assert_log_lines_carry_max_logit(out, only)
    assert only[0]["max_attention_logit"] == records[0]["max_attention_logit"]
    assert only[0]["loss"] == records[0]["loss"] and only[-1]["loss"] != records[-1]["loss"]
    assert all(r["qk_clipped_heads"] > 0 for r in only)  # would have been clipped at 0.05
