"""Checkpoints at DP=2 and TP=2 (torchrun, gloo, CPU).

Launch 1 trains each case (ZeRO-1 Adam fp32 and bf16, layer-wise Muon, DDP with plain Adam and Muon,
TP=2 Muon) for 6 steps uninterrupted, and again for 3
steps ending in a checkpoint. Launch 2, a new set of processes, loads that checkpoint into a fresh
model and optimizer and trains steps 3..5: losses and final parameters must equal the uninterrupted
run bitwise. Here, in one process, the DP=2 checkpoints are loaded into plain (non-distributed)
optimizers and compared by name with the checkpoint's full tensors; plain single-process checkpoints
written here are loaded by launch 2 into the DP=2 sharded optimizers (the other direction).
"""

from __future__ import annotations

import sys

import pytest
import torch

from torchrun_helpers import WORKERS, run_torchrun

sys.path.insert(0, str(WORKERS))
import ckpt_distopt_worker as worker  # noqa: E402

from megatron_opt.checkpoint import (  # noqa: E402
    load_checkpoint,
    model_key,
    named_optimizer_state,
    optimizer_key,
    read_full_checkpoint,
    save_checkpoint,
)
from megatron_opt.parallel import ProcessGroupCollection  # noqa: E402

pytestmark = pytest.mark.functional
WORKER = WORKERS / "ckpt_distopt_worker.py"
PLAIN_STEPS = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt_distopt")
    first = run_torchrun(WORKER, 2, ["--mode", "first", "--root", root], timeout=60)
    single = ProcessGroupCollection.single_process()
    for case in worker.SHARDED_CASES:
        model, opt = worker.build(case, single, distributed=False)
        worker.train(model, opt, single, 0, PLAIN_STEPS)
        save_checkpoint(root / f"{case}_plain_ckpt", PLAIN_STEPS, [model], opt, args={"case": case})
        # what the saving layout does next, for the DP=2 run that loads this checkpoint to match
        losses = worker.train(model, opt, single, PLAIN_STEPS, PLAIN_STEPS + worker.PLAIN_CONTINUE)
        torch.save({"losses": losses}, root / f"{case}_plain_next.pt")
    resume = run_torchrun(WORKER, 2, ["--mode", "resume", "--root", root], timeout=60)
    return root, first.stdout + resume.stdout


@pytest.mark.parametrize("case", worker.CASES)
def test_resume_in_a_new_launch_is_bitwise(runs, case):
    root, out = runs
    assert out.count(f"FIRST_OK {case} ") == 2 and out.count(f"RESUME_OK {case} ") == 2, out[-3000:]
    full = torch.load(root / f"{case}_full.pt")
    first = torch.load(root / f"{case}_first.pt")
    resumed = torch.load(root / f"{case}_resumed.pt")
    assert len(first["losses"]) == worker.SPLIT and len(resumed["losses"]) == worker.STEPS - worker.SPLIT
    assert first["losses"] + resumed["losses"] == full["losses"]
    assert full["params"].keys() == resumed["params"].keys()
    for name, p in full["params"].items():
        assert torch.equal(resumed["params"][name], p), name
    # the run did move the parameters (a no-op load would not pass by accident)
    assert any(not torch.equal(first["params"][n], full["params"][n]) for n in full["params"])


def _check_plain_against_checkpoint(path, model, opt, required_keys):
    _, full = read_full_checkpoint(path)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), full[model_key(name)]), name
    named = named_optimizer_state(opt)
    seen = {k: 0 for k in required_keys}
    n = 0
    for name, entry in named.items():
        for key, t in entry.items():
            assert torch.equal(t, full[optimizer_key(name, key)]), f"{name}/{key}"
            seen[key] = seen.get(key, 0) + 1
            n += 1
    for key in required_keys:
        assert seen[key] > 0, f"no {key} loaded"
    # every optimizer tensor in the checkpoint found a home
    saved = {k for k in full if not k.startswith(model_key(""))}
    loaded = {optimizer_key(name, key) for name, entry in named.items() for key in entry}
    assert saved == loaded, sorted(saved ^ loaded)[:5]
    return n, seen


# continuing in one process vs the DP=2 run: same global batches, different reduction order
TOLERANCE = {"adam": dict(rtol=0, atol=1e-5), "adam_layerwise": dict(rtol=0, atol=1e-5), "adam_bf16": dict(rtol=0, atol=2e-2), "muon": dict(rtol=0, atol=1e-3)}
REQUIRED = {"adam": ("exp_avg", "exp_avg_sq"), "adam_layerwise": ("exp_avg", "exp_avg_sq"), "adam_bf16": ("exp_avg", "exp_avg_sq", "main_param"),
            "muon": ("momentum_buffer", "exp_avg", "exp_avg_sq")}


@pytest.mark.parametrize("case", worker.SHARDED_CASES)
def test_dp2_checkpoint_loads_into_a_plain_single_process_optimizer(runs, case):
    root, _ = runs
    single = ProcessGroupCollection.single_process()
    model, opt = worker.build(case, single, distributed=False, seed=4321)
    saved_lrs = {g["lr"] for g in opt.param_groups}
    for group in opt.param_groups:
        group["lr"] = 123.0  # the checkpoint's group settings must replace this (no scheduler here)
    loaded = load_checkpoint(root / f"{case}_ckpt", [model], opt)
    assert loaded is not None and loaded.loaded_optimizer and loaded.iteration == worker.SPLIT
    assert {g["lr"] for g in opt.param_groups} == saved_lrs
    n, seen = _check_plain_against_checkpoint(loaded.path, model, opt, REQUIRED[case])
    assert n >= len(list(model.parameters()))
    # training on from it in one process matches the DP=2 run (same global batches)
    losses = worker.train(model, opt, single, worker.SPLIT, worker.STEPS)
    full = torch.load(root / f"{case}_full.pt")
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(full["losses"][worker.SPLIT:]), rtol=1e-4, atol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach().float(), full["params"][name].float(), **TOLERANCE[case], msg=name)


@pytest.mark.parametrize("case", worker.SHARDED_CASES)
def test_plain_checkpoint_loads_into_the_dp2_sharded_optimizer(runs, case):
    _, out = runs
    assert out.count(f"PLAIN_TO_DIST_OK {case} ") == 2, out[-3000:]
    # the DP=2 run trains on with the single-process run's losses (same global batches, other reduction order)
    root, _ = runs
    dist_losses = torch.load(root / f"{case}_plain_to_dist.pt")["losses"]
    plain_losses = torch.load(root / f"{case}_plain_next.pt")["losses"]
    assert len(dist_losses) == len(plain_losses) == worker.PLAIN_CONTINUE
    torch.testing.assert_close(torch.tensor(dist_losses), torch.tensor(plain_losses), rtol=1e-4, atol=0)
