#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), train the default model on tiny shakespeare,
# then sample from the best checkpoint.
#   TIME_LIMIT   training budget in seconds (default 600)
#   OUT          run directory (default runs/shakespeare)
#   extra arguments go to `charrnn train`
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
BIN=${VENV:-.venv}/bin
OUT=${OUT:-runs/shakespeare}
"$BIN/charrnn" train --out "$OUT" --time-limit "${TIME_LIMIT:-600}" "$@"
"$BIN/charrnn" sample "$OUT" --prime "ROMEO:" --length 500 --temperature 0.8 --seed 0
