"""Muon family under TP=2 (torchrun, gloo): duplicated == TP=1, distributed == duplicated, blockwise == per-shard;
the standard and the Gram-space Newton–Schulz."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "workers" / "muon_tp_worker.py"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.functional
def test_muon_tensor_parallel_modes():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=90)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            _, name, diff, tol = line.split()
            results[name] = (float(diff), float(tol))
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    expected = {f"{v}.{c}" for v in ("muon", "muon_split_qkv", "adamuon", "normuon", "namo", "muon_gram")
                for c in ("duplicated_vs_tp1", "distributed_vs_duplicated(relative)", "weights_moved(negated)")}
    expected |= {"muon.blockwise_vs_per_shard_muon", "muon.blockwise_differs_from_tp1(negated)"}
    expected |= {f"{v}.{m}_device_skip_vs_host_skip" for v in ("muon_split_qkv", "normuon") for m in ("duplicated", "distributed")}
    expected |= {"muon_big.duplicated_vs_tp1", "muon_big.distributed_vs_duplicated"}  # symmetric-block NS under TP
    expected |= {"muon_big_gram.duplicated_vs_tp1", "muon_big_gram.distributed_vs_duplicated", "muon_big_gram.vs_standard_tp1"}
    assert set(results) == expected
    for name, (diff, tol) in results.items():
        assert diff <= tol, f"{name}: {diff} > {tol}"
