"""Checkpoints across layouts (torchrun, gloo, CPU): save under one TP/PP/DP layout, load under another.

One 2-rank launch runs the chain single → DP=2 → TP=2 (save) → TP=1,DP=2 (save) → PP=2 (save) → TP=2;
every load is compared bitwise, by parameter name, with the full tensors read back from the
checkpoint, and every save with the in-memory state gathered over TP. Here, in one process, the
DP=2, PP=2 and TP=2 checkpoints are loaded again (DP 2→1, PP 2→1, TP 2→1), and a 4-rank launch loads the
single-process checkpoint at DP=4 and TP=2×DP=2 (DP 1→4). After every load the loading layout
trains the steps the saving layout trained after its save, with the same losses. A second launch SIGKILLs one rank in
the middle of a save: the previous checkpoint still loads and ``latest`` still points at it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from torchrun_helpers import REPO_ROOT, WORKERS, run_torchrun

sys.path.insert(0, str(WORKERS))
import ckpt_worker as worker  # noqa: E402

from megatron_opt.checkpointing import load_checkpoint, save_checkpoint  # noqa: E402
from megatron_opt.parallel import ProcessGroupCollection  # noqa: E402

pytestmark = pytest.mark.functional
WORKER = WORKERS / "ckpt_worker.py"


@pytest.fixture(scope="module")
def reshard_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt_reshard")
    pgs = ProcessGroupCollection.single_process()
    model, optimizer = worker.build(pgs)
    worker.train(model, optimizer, pgs, 4)
    save_checkpoint(root / "single", 4, [model], optimizer, args={"tp": 1, "pp": 1})
    worker.continue_after_save(str(root), "single", model, optimizer, pgs, first_step=4)
    proc = run_torchrun(WORKER, 2, ["--plan", "reshard", "--root", root], timeout=90)
    return root, proc.stdout


@pytest.mark.parametrize("layout", ["tp=1 pp=1 dp=2", "tp=2 pp=1 dp=1", "tp=1 pp=2 dp=1"])
def test_two_rank_layouts_load_what_other_layouts_saved(reshard_root, layout):
    _, out = reshard_root
    loads = re.findall(rf"LOAD_OK src=\w+ {layout} ", out)
    assert len(loads) >= 2, out[-3000:]  # both ranks checked every tensor they hold
    for name in ("tp2", "dp2", "pp2"):
        assert out.count(f"SAVE_OK {name}") == 2, out[-3000:]


@pytest.mark.parametrize("saved_as, iteration", [("dp2", 12), ("pp2", 14), ("tp2", 10)])
def test_one_process_loads_two_rank_checkpoints_and_trains_on(reshard_root, saved_as, iteration):
    root, _ = reshard_root
    pgs = ProcessGroupCollection.single_process()
    model, optimizer = worker.build(pgs)
    loaded = load_checkpoint(root / saved_as, [model], optimizer)
    assert loaded.iteration == iteration and loaded.args["tp"] in (1, 2)
    assert not loaded.loaded_rng  # a different layout: RNG states are not restored (with a warning)
    assert worker.check_equal_to_checkpoint(loaded.path, model, optimizer, pgs) == 112
    # one process trains on with the losses the two-rank layout had after its save
    losses = worker.check_continuation(str(root), saved_as, model, optimizer, pgs)
    assert len(losses) == worker.CONTINUE_STEPS


def test_four_ranks_load_a_single_process_checkpoint_at_dp4_and_tp2_dp2(reshard_root):
    root, _ = reshard_root
    out = run_torchrun(WORKER, 4, ["--plan", "wide", "--root", root], timeout=120).stdout
    for layout in ("tp=1 pp=1 dp=4", "tp=2 pp=1 dp=2"):
        # counted in the whole output: lines of different ranks can run together in torchrun's pipe
        assert out.count(f"LOAD_OK src=single {layout} ") == 4, out[-3000:]


def test_a_rank_killed_mid_save_leaves_the_previous_checkpoint(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           "--plan", "kill", "--root", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode != 0 and "SAVED 2" not in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "[rank 0] SAVED 1" in proc.stdout
    save_dir = tmp_path / "ckpt"
    names = os.listdir(save_dir)
    assert "iter_0000002" not in names and any(n.startswith("iter_0000002.tmp-") for n in names), names
    assert (save_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    pgs = ProcessGroupCollection.single_process()
    model, optimizer = worker.build(pgs)
    model.register_parameter("ballast", torch.nn.Parameter(torch.zeros(4_000_000)))
    loaded = load_checkpoint(save_dir, [model], optimizer)
    assert loaded.iteration == 1 and model.ballast.abs().sum() > 0
    assert worker.check_equal_to_checkpoint(loaded.path, model, optimizer, pgs) > 0
    # and training resumes from it
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = worker.train_losses(model, optimizer, pgs, 2, first_step=loaded.iteration)
    assert all(torch.isfinite(torch.tensor(losses)))
    moved = "decoder.layers.0.mlp.linear_fc1.weight"
    assert not torch.equal(before[moved], dict(model.named_parameters())[moved])
