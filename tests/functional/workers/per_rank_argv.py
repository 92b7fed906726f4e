"""Run training/pretrain_gpt.py with extra flags on ONE rank (to test the start-up agreement check).

    torchrun ... per_rank_argv.py RANK EXTRA_ARGS... -- COMMON_ARGS...

The rank whose RANK equals the first argument gets EXTRA_ARGS appended to COMMON_ARGS; every other
rank runs COMMON_ARGS alone, as a wrapper script that differs per node would.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "training" / "pretrain_gpt.py"

if __name__ == "__main__":
    target, rest = sys.argv[1], sys.argv[2:]
    split = rest.index("--")
    extra, common = rest[:split], rest[split + 1:]
    argv = common + (extra if os.environ.get("RANK") == target else [])
    sys.argv = [str(SCRIPT), *argv]
    runpy.run_path(str(SCRIPT), run_name="__main__")
