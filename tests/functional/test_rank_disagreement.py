"""Ranks started with different configurations stop at start-up with one line naming what differs.

Real torchrun (2 ranks, gloo) of training/pretrain_gpt.py through workers/per_rank_argv.py, which
appends extra flags on rank 1 only (as a per-node wrapper script would). Without the check, a
different --lr trains diverging replicas silently and a different --tensor-model-parallel-size
builds mismatched process groups.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from torchrun_helpers import REPO_ROOT, WORKERS

pytestmark = pytest.mark.functional

WRAPPER = WORKERS / "per_rank_argv.py"
COMMON = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
          "--micro-batch-size", "2", "--no-progress", "--optimizer", "adam", "--lr", "3e-3", "--train-iters", "2",
          "--eval-iters", "0"]


def launch(rank1_extra: list) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WRAPPER), "1",
           *rank1_extra, "--", *COMMON]
    return subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    yaml_file = tmp_path_factory.mktemp("disagree") / "node1.yaml"
    yaml_file.write_text("tensor-model-parallel-size: 2\nadam-beta2: 0.95\n")
    started = {"flags": launch(["--lr", "1e-3", "--seed", "7"]), "yaml": launch(["--yaml-cfg", str(yaml_file)])}
    done = {}
    for name, proc in started.items():
        out, err = proc.communicate(timeout=180)
        done[name] = (proc.returncode, out, err)
    return done


def error_lines(stdout: str, stderr: str) -> list:
    return [line for line in (stdout + stderr).splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("name,expected", [
    ("flags", "error: ranks were started with different configurations (--lr: rank 0 0.003, rank 1 0.001; "
              "--seed: rank 0 1234, rank 1 7); expected every rank to get the same command line and YAML file"),
    ("yaml", "error: ranks were started with different configurations (--adam-beta2: rank 0 0.999, rank 1 0.95; "
             "--data-parallel-size: rank 0 2, rank 1 1; --global-batch-size: rank 0 4, rank 1 2; "
             "--tensor-model-parallel-size: rank 0 1, rank 1 2); expected every rank to get the same command line and YAML file"),
])
def test_disagreement_is_one_line_naming_fields_and_ranks_exit_2(jobs, name, expected):
    code, out, err = jobs[name]
    assert code != 0
    assert error_lines(out, err) == [expected], err[-3000:]
    assert re.search(r"exitcode\s*:\s*2", err), err[-3000:]
    first_traceback = err.find("Traceback")  # torchrun's own report of the failed child comes last
    assert first_traceback == -1 or first_traceback > err.index("error:"), err
    assert "iteration" not in out  # stopped before training
