"""tools/bench_optimizer.py at tiny size: the JSON has every key and sane positive numbers (no timing thresholds)."""

from __future__ import annotations

import json
import math

import pytest

from tools import bench_optimizer


def _positive_quartiles(q):
    assert set(q) == {"median", "q1", "q3"}
    assert all(math.isfinite(v) and v > 0 for v in q.values()), q
    assert q["q1"] <= q["median"] <= q["q3"]


def test_tiny_benchmark_writes_complete_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench_optimizer.main(["--preset", "tiny", "--repeats", "1", "--json", str(out)])
    res = json.loads(out.read_text())
    assert "ours/ref" in capsys.readouterr().out
    assert {"machine", "preset", "steps", "newton_schulz"} <= set(res)
    assert [s["optimizer"] for s in res["steps"]] == ["adam", "muon"]
    for s in res["steps"]:
        assert s["n_params"] > 0 and s["repeats"] == 1
        for key in ("ours_s", "ref_s", "ratio"):
            _positive_quartiles(s[key])
        # The reference does the same math: after one step both models agree (bf16 rounding / fp32 GEMM order).
        assert s["max_abs_param_diff_after_step1"] < (1e-2 if s["optimizer"] == "adam" else 1e-5)
        assert s["state_bytes_per_param"]["ours"] > 0 and s["state_bytes_per_param"]["ref"] > 0
        assert set(s["rss_delta_bytes_per_param"]) == {"ours", "ref"}  # coarse (allocator), so only present
        _positive_quartiles(s["cpu"]["ratio"])
    adam = res["steps"][0]["state_bytes_per_param"]
    assert adam["ours"] == adam["ref"] == 12.0  # fp32 main param + exp_avg + exp_avg_sq (0-d step counters not counted)
    shapes = [tuple(r["shape"]) for r in res["newton_schulz"]]
    assert (32, 32) in shapes and (96, 32) in shapes
    for r in res["newton_schulz"]:
        for key in ("ns_gflops", "matmul_gflops", "ns_fraction_of_matmul"):
            _positive_quartiles(r[key])


def test_tiny_benchmark_times_gram_muon_next_to_standard(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench_optimizer.main(["--preset", "tiny", "--repeats", "2", "--optimizers", "muon,muon_gram", "--json", str(out)])
    res = json.loads(out.read_text())
    assert "muon_gram / muon" in capsys.readouterr().out
    muon, gram = res["steps"]
    assert (muon["optimizer"], gram["optimizer"]) == ("muon", "muon_gram")
    assert muon["ref_s"] == gram["ref_s"]  # one reference, timed in the same rounds as both of ours
    assert gram["timed_with"] == ["muon"] and muon["timed_with"] == ["muon_gram"]
    for key in ("ours_s", "ref_s", "ratio"):
        _positive_quartiles(gram[key])
    _positive_quartiles(gram["cpu"]["ratio"])
    _positive_quartiles(gram["vs_muon"]["ratio"])
    _positive_quartiles(gram["vs_muon"]["cpu"]["ratio"])
    assert gram["max_abs_param_diff_after_step1"] < 1e-5  # same polynomial, fp32 rounding only
    assert gram["state_bytes_per_param"] == muon["state_bytes_per_param"]
    rows = {tuple(r["shape"]): r for r in res["newton_schulz"]}
    assert rows[(32, 32)]["gram_applies"] is False and "gram_gflops" not in rows[(32, 32)]  # square: standard loop
    for shape in ((96, 32), (128, 32), (32, 128)):
        r = rows[shape]
        assert r["gram_applies"] is True
        for key in ("gram_gflops", "gram_fraction_of_matmul", "gram_time_vs_ns", "cpu_gram_gflops", "cpu_gram_time_vs_ns"):
            _positive_quartiles(r[key])
        assert 0 < r["gram_max_abs_diff_vs_ns"] < 1e-5  # the gram loop really ran (a different rounding), same result


def test_repeated_or_unknown_optimizer_is_one_clear_error(capsys):
    for value in ("muon,muon", "muon,gram"):
        with pytest.raises(SystemExit):
            bench_optimizer.main(["--preset", "tiny", "--optimizers", value])
        assert f"--optimizers={value}" in capsys.readouterr().err
