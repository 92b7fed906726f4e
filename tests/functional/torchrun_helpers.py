"""Launch a worker script under torchrun (gloo, CPU) for functional tests.

A plain module (not conftest) so unit and functional tests can be collected in one run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).resolve().parent / "workers"


def run_torchrun(script: str | os.PathLike, nproc: int, args: Sequence[str] = (), timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m torch.distributed.run --standalone --nproc_per_node nproc script *args``.

    Children get OMP_NUM_THREADS=1 and the repository on PYTHONPATH. A non-zero exit or a timeout
    fails the calling test with the tail of the workers' output.
    """
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script), *map(str, args)]
    try:
        proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-4000:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-4000:]
        pytest.fail(f"torchrun {script} timed out after {timeout}s\n{out}")
    if proc.returncode != 0:
        pytest.fail(f"torchrun {script} exited with {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}")
    return proc

