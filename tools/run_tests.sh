#!/usr/bin/env bash
# The one test command (README Quickstart and .ci/run): make a venv if needed, install the project
# with the CPU torch wheel pinned, run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test FORCE_INSTALL=1 source tools/setup_venv.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$VENV_PYTHON" -m pytest -q "$@"
