#!/usr/bin/env bash
# Make .venv (or $VENV) if needed and install the project into it with the CPU torch wheel pinned.
# Sourced by tools/run_tests.sh and examples/_launch.sh; afterwards $VENV_PYTHON is the interpreter.
# A GPU user pre-installs their own CUDA build of torch into the venv; it is then left alone.
set -euo pipefail
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -c "import megatron_opt, yaml${EXTRAS:+, pytest}" 2>/dev/null && [ -z "${FORCE_INSTALL:-}" ] \
  || "$VENV/bin/python" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
VENV_PYTHON="$VENV/bin/python"
