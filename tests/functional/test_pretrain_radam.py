"""A dotted-path optimizer (``torch.optim.RAdam``) trains the GPT through the real entry point.

``training/pretrain_gpt.py`` under torchrun (gloo), ``--bf16``, ``--optimizer torch.optim.RAdam
--optimizer-kwargs '{...}'``, global batch 4 = micro batch 2 × (1 micro-batch × DP=2 | 2 micro-batches × DP=1),
so both layouts see the same samples and DP=1 accumulates them in the order the DP=2 all-reduce sums them.

Runs: DP=1 (Float16Optimizer, the reference), DP=2 (Float16Optimizer) and DP=2 with
``--use-distributed-optimizer`` (ZeRO-1: RAdam's state ``exp_avg``, ``exp_avg_sq``, ``step`` is
elementwise, so byte-range shards of the fp32 main params are exact).

Tolerances: the logged losses are bitwise equal at every iteration (clipping off, so the sharded norm's
summation order never reaches the parameters); the grad norm is relative 1e-6 (the ZeRO norm sums
per-shard squares in another order).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torchrun_helpers import REPO_ROOT, run_torchrun

pytestmark = pytest.mark.functional

SCRIPT = REPO_ROOT / "training" / "pretrain_gpt.py"
ITERS = 15
RADAM = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
         "--micro-batch-size", "2", "--global-batch-size", "4", "--no-progress", "--bf16",
         "--optimizer", "torch.optim.RAdam", "--optimizer-kwargs", '{"betas": [0.9, 0.95], "decoupled_weight_decay": true}',
         "--lr", "3e-3", "--lr-decay-style", "constant", "--weight-decay", "0.01", "--clip-grad", "0",
         "--train-iters", str(ITERS), "--log-interval", "5", "--eval-iters", "0"]


def _run(tmp: Path, name: str, nproc: int, wrapper: str, *extra: str) -> list:
    metrics = tmp / f"{name}.jsonl"
    out = run_torchrun(SCRIPT, nproc, [*RADAM, *extra, "--metrics-file", str(metrics), "--plot-file", str(tmp / f"{name}.png")],
                       timeout=120).stdout
    assert f"dp={nproc} | optimizer torch.optim.RAdam" in out and f"({wrapper})" in out, out
    records = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "train"]
    assert [r["iteration"] for r in records] == list(range(1, ITERS + 1))
    assert all(r["skipped"] == 0 for r in records)
    return records


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("radam_dp1"), "dp1", 1, "Float16Optimizer")


def _check_against_reference(records: list, reference: list) -> None:
    losses = [r["loss"] for r in records]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses  # it trains
    assert losses == [r["loss"] for r in reference]
    for r, ref in zip(records, reference):
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-6)


def test_radam_bf16_dp2_equals_dp1(tmp_path, reference):
    _check_against_reference(_run(tmp_path, "dp2", 2, "Float16Optimizer"), reference)


def test_radam_bf16_dp2_distributed_optimizer_equals_dp1(tmp_path, reference):
    _check_against_reference(_run(tmp_path, "dp2_zero1", 2, "DistributedOptimizer", "--use-distributed-optimizer"), reference)
