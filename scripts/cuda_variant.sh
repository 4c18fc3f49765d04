#!/usr/bin/env bash
# The CUDA build of the extension on a machine without a GPU: a copy of the tree under
# build/cuda-variant (so its in-place _C.so leaves the CPU build's alone), a second virtualenv
# with the CUDA build of torch, and the CPU test suite run against it. Nothing can run on a GPU
# here; this proves that the CUDA kernels compile, link and import, and that the CPU paths of
# a CUDA build pass.
#   TORCH_SPEC   the CUDA torch (default torch==2.14.1, CUDA 13.0)
#   VENV         its virtualenv (default .venv-cuda at the repository root)
#   PYTHON       the interpreter that creates it (default python3)
# Another torch and Python, e.g. torch 2.11.0+cu130 on Python 3.12 (from PyPI, about 5 GB):
#   PYTHON=/path/to/python3.12 TORCH_SPEC=torch==2.11.0 VENV=$PWD/.venv-cu130 bash scripts/cuda_variant.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export VENV=${VENV:-$ROOT/.venv-cuda} TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1} CHARRNN_CUDA=1
SRC=build/cuda-variant
mkdir -p "$SRC"
git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$SRC"
cd "$SRC"
bash scripts/setup.sh
"$VENV/bin/python" -c "import charrnn_ext; info = charrnn_ext.build_info(); print(info); assert info['cuda']"
"$VENV/bin/python" -m pytest -q -x tests
