#!/usr/bin/env bash
# The release build tested as users get it: an sdist, a wheel built from that sdist (so the
# sdist must hold every file the build needs), the wheel installed into a fresh virtualenv
# with its dependencies, and the test suite run from a directory outside the source tree, so
# that it imports charrnn_ext from site-packages.
#   VENV         the virtualenv that builds (default .venv, made by scripts/setup.sh); the
#                build uses its torch (--no-isolation), and the fresh virtualenv gets the
#                same torch version
#   WORK         where the sdist, the wheel and the fresh virtualenv go (default build/wheel-check)
#   PYTHON       the interpreter that creates the fresh virtualenv (default python3)
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_PY=$(cd "$(dirname "${VENV:-.venv}/bin/python")" && pwd)/python
WORK=$(mkdir -p "${WORK:-build/wheel-check}" && cd "${WORK:-build/wheel-check}" && pwd)
rm -rf "$WORK/dist" "$WORK/venv" "$WORK/run" "$WORK/build.log"
mkdir -p "$WORK/run"

echo "== sdist, then a wheel built from it"
"$BUILD_PY" -m pip install -q --disable-pip-version-check build
"$BUILD_PY" -m build --no-isolation --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 \
  || { tail -n 40 "$WORK/build.log"; echo "the build failed; its log: $WORK/build.log"; exit 1; }
SDIST=$(ls "$WORK"/dist/charrnn_ext-*.tar.gz)
WHEEL=$(ls "$WORK"/dist/charrnn_ext-*.whl)
# The wheel built from the sdist proves the CPU build's files are there; the CUDA build's (not
# compiled here) and the tests' are checked by name.
listing=$(tar -tzf "$SDIST" | cut -d/ -f2-)
for f in $(git ls-files csrc tests) LICENSE; do
  grep -qxF "$f" <<<"$listing" || { echo "the sdist lacks $f"; exit 1; }
done
if grep -q "_build_config.py\|\.so\$" <<<"$listing"; then
  echo "the sdist carries a build's output"; exit 1
fi

echo "== a fresh virtualenv with the wheel and its dependencies"
TORCH_VERSION=$("$BUILD_PY" -c 'import torch; print(torch.__version__)')
"${PYTHON:-python3}" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION" "$WHEEL[test]"

echo "== the test suite against the installed wheel, from outside the source tree"
cd "$WORK/run"
"$WORK/venv/bin/python" - <<'EOF'
import sysconfig
import charrnn_ext
where = charrnn_ext.__file__
assert where.startswith(sysconfig.get_paths()["platlib"]), f"charrnn_ext imported from {where}, not site-packages"
print("charrnn_ext", charrnn_ext.__version__, "from", where, charrnn_ext.build_info())
EOF
"$WORK/venv/bin/charrnn" train --help >/dev/null
"$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" "$ROOT/tests" "$@"
