"""A NaN or Inf in ONE rank's gradient under DP=2 skips the step on both ranks, losing nothing.

One torchrun launch (2 ranks, gloo) covers adam and muon, each plain (DDP + non-distributed
optimizer) and distributed (ZeRO DistributedOptimizer / LayerWiseDistributedOptimizer), in fp32 and
bf16, and adam in fp16 with the dynamic loss scaler. Rank 1 corrupts its gradient at step 2, either
one element of its local gradient before the DP reduction or its whole reduced gradient after it
(see workers/nonfinite_worker.py).

What is compared (all bitwise, ``torch.equal``):
* step 2 reports ``updated=False`` on both ranks; every other step updates;
* model params, fp32 main params (or main shards) and every optimizer state tensor after step 2 equal
  those just before it, on each rank; the loss scalers of the two ranks agree;
* the params after every later step equal those of a reference run that never saw batch 2
  (steps 0, 1, 3), on both ranks — the skipped step leaves no trace.
"""

from __future__ import annotations

import math

import pytest
import torch

from torchrun_helpers import WORKERS, run_torchrun

pytestmark = pytest.mark.functional

WORKER = WORKERS / "nonfinite_worker.py"
BAD, STEPS = 2, 4


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("nonfinite")
    run_torchrun(WORKER, 2, ["--out", out], timeout=180)
    return [torch.load(out / f"nonfinite_rank{r}.pt", weights_only=False) for r in range(2)]


def injected_cases(results) -> list:
    return sorted(k for k in results[0] if not k.endswith("/reference"))


def assert_same_tree(a, b, where: str) -> None:
    if torch.is_tensor(a):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_every_configuration_was_covered(results):
    cases = injected_cases(results)
    configs = {c.rsplit("/", 2)[0] for c in cases}
    assert configs == {f"{o}/{s}/{p}" for o in ("adam", "muon") for s in ("plain", "distributed") for p in ("fp32", "bf16")} | {
        "adam/plain/fp16", "adam/distributed/fp16", "adam/plain-ondevice/fp32", "muon/plain-ondevice/fp32"}
    assert {c.split("/", 3)[3] for c in cases} == {"nan/local", "nan/reduced", "inf/local", "inf/reduced"}
    assert len(cases) == 36


def test_bad_step_is_skipped_on_both_ranks_and_only_that_step(results):
    for case in injected_cases(results):
        for rank in (0, 1):
            steps = results[rank][case]["steps"]
            assert [steps[s][0] for s in range(STEPS)] == [s != BAD for s in range(STEPS)], (case, rank)
        norm1 = results[1][case]["steps"][BAD][1]
        if "/fp16/" in case:
            assert norm1 is None  # the loss scaler caught it first
        else:
            assert not math.isfinite(norm1), case  # the corrupted rank saw it in the norm


def test_params_main_params_and_optimizer_state_unchanged_by_the_skipped_step(results):
    for case in injected_cases(results):
        for rank in (0, 1):
            r = results[rank][case]
            assert_same_tree(r["after"]["params"], r["before"]["params"], f"{case} rank {rank} params")
            assert_same_tree(r["after"]["opt"]["main"], r["before"]["opt"]["main"], f"{case} rank {rank} main params")
            assert_same_tree(r["after"]["opt"]["state"], r["before"]["opt"]["state"], f"{case} rank {rank} optimizer state")
            assert any(r["before"]["opt"]["state"]), f"{case}: no optimizer state to compare"
        assert_same_tree(results[0][case]["after"]["opt"]["scalers"], results[1][case]["after"]["opt"]["scalers"],
                         f"{case} loss scalers")


def test_fp16_scaler_counts_the_overflow_once_on_both_ranks(results):
    for case in (c for c in injected_cases(results) if "/fp16/" in c):
        for rank in (0, 1):
            before = [s for s in results[rank][case]["before"]["opt"]["scalers"] if s is not None]
            after = [s for s in results[rank][case]["after"]["opt"]["scalers"] if s is not None]
            assert before and len(before) == len(after)
            for b, a in zip(before, after):
                # hysteresis=2: the first overflow spends one unit of budget, the scale holds
                assert a["hysteresis_tracker"] == b["hysteresis_tracker"] - 1 and a["growth_tracker"] == 0, case
                assert torch.equal(a["scale"], b["scale"])


def test_training_after_the_skip_equals_a_run_that_never_saw_that_batch(results):
    for case in injected_cases(results):
        reference = results[0][case.rsplit("/", 2)[0] + "/reference"]["params"]
        for rank in (0, 1):
            run = results[rank][case]["params"]
            for step in range(BAD + 1, STEPS):
                assert_same_tree(run[step], reference[step], f"{case} rank {rank} step {step}")
        # and training did move on after the skip
        moved = results[0][case]["params"][STEPS - 1]
        assert any(not torch.equal(moved[n], results[0][case]["after"]["params"][n]) for n in moved), case
