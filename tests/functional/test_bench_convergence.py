"""tools/bench_convergence.py at tiny size: two real pretrain_gpt.py runs, JSON keys, sane numbers and a PNG."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from torchrun_helpers import REPO_ROOT

pytestmark = pytest.mark.functional


def test_tiny_convergence_run(tmp_path):
    png, out = tmp_path / "c.png", tmp_path / "c.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "bench_convergence.py"), "--model", "tiny", "--optimizers", "adam,muon",
           "--train-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--out-dir", str(tmp_path / "runs"),
           "--png", str(png), "--json", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["baseline"] == "adam" and res["baseline_tokens"] == 4 * res["tokens_per_iteration"]
    assert [r["optimizer"] for r in res["runs"]] == ["adam", "muon"]
    for r in res["runs"]:
        assert [t for t, _ in r["curve"]] == [2 * res["tokens_per_iteration"], 4 * res["tokens_per_iteration"]]
        assert all(math.isfinite(loss) and 0 < loss < 10 for _, loss in r["curve"])
        assert "--optimizer" in r["flags"] and r["wall_s"] > 0
    assert res["runs"][0]["fraction_of_baseline_tokens"] == 1.0  # the baseline reaches its own final loss at the end
    assert res["target_valid_loss"] == res["runs"][0]["curve"][-1][1]
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
