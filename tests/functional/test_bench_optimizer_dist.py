"""tools/bench_optimizer.py under torchrun (2 ranks, tiny): layer-wise vs duplicated Muon and the memory table in the JSON."""

from __future__ import annotations

import json
import math

import pytest

from torchrun_helpers import REPO_ROOT, run_torchrun

pytestmark = pytest.mark.functional


def test_two_rank_benchmark_json(tmp_path):
    out = tmp_path / "bench.json"
    run_torchrun(REPO_ROOT / "tools" / "bench_optimizer.py", 2,
                 ["--preset", "tiny", "--repeats", "1", "--optimizers", "muon", "--json", str(out)], timeout=180)
    res = json.loads(out.read_text())
    dist = res["distributed"]
    assert dist["world_size"] == 2
    lw = dist["muon_step_layer_wise_vs_duplicated"]
    for key in ("ours_s", "ref_s", "ratio"):
        assert all(math.isfinite(v) and v > 0 for v in lw[key].values())
    rows = {r["precision"]: r for r in dist["distributed_optimizer_memory"]}
    assert set(rows) == {"bf16", "fp32"}
    for r in rows.values():
        assert r["dp"] == 2 and r["bytes_per_param"] > 0
        assert r["theory_per_param"] == (6 + 12 / 2 if r["precision"] == "bf16" else 8 + 8 / 2)
        assert 1.0 <= r["ratio"] < 1.2  # measured >= theory; the excess is bucket padding
    assert [s["optimizer"] for s in res["steps"]] == ["muon"]
