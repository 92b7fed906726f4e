"""tools/bench_optimizer.py at tiny size: the JSON has every key and sane positive numbers (no timing thresholds)."""

from __future__ import annotations

import json
import math

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
