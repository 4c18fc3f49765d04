#!/usr/bin/env bash
# Creates .venv (once), installs torch and the dependencies, and builds the extension
# against that torch. Idempotent: a second run only rebuilds what changed.
#   TORCH_SPEC   the torch to install (default torch==2.13.0, the CPU build)
#   VENV         where the virtualenv lives (default .venv)
#   PYTHON       the interpreter that creates it (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "$TORCH_SPEC" numpy tqdm matplotlib \
  pytest expecttest ninja setuptools wheel
# --no-build-isolation: compile against the torch installed above, not a fresh download.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation -e .
"$VENV/bin/python" -c "import charrnn_ext; print('charrnn_ext built:', charrnn_ext.build_info())"
