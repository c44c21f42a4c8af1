#!/usr/bin/env bash
# Fetches, here (a machine that reaches PyPI), the pure-Python wheels scripts/gpu-check.sh installs on a GPU
# machine that has torch, transformers, pandas, rich and matplotlib but not these and no package registry:
# hydra-core, omegaconf, antlr4-python3-runtime (the analytic configs) and fvcore with the packages it imports
# (the shim's secondary counter). Versions are the tested set's (constraints/tested.txt); sdists (fvcore,
# antlr4-python3-runtime) are built into py3-none-any wheels here, so the GPU machine needs no build backend.
#
#   bash scripts/gpu-wheels.sh            # into .whl/ (ignored by git; the device tool carries it: carry [".whl"])
#   DSOCR_WHEELS_DIR=DIR bash scripts/gpu-wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${DSOCR_WHEELS_DIR:-.whl}
PACKAGES=(hydra-core omegaconf antlr4-python3-runtime fvcore iopath yacs portalocker tabulate termcolor)
pins=()
for name in "${PACKAGES[@]}"; do
    pin=$(grep -i "^${name}==" constraints/tested.txt || true)
    if [ -z "$pin" ]; then
        echo "gpu-wheels.sh: $name is not in constraints/tested.txt: add it to the tested set or drop it here" >&2
        exit 2
    fi
    pins+=("$pin")
done
mkdir -p "$DEST"
"$PY" -m pip wheel -q --no-deps --wheel-dir "$DEST" "${pins[@]}"
bad=$(find "$DEST" -type f -name '*.whl' ! -name '*-py3-none-any.whl' ! -name '*-py2.py3-none-any.whl')
if [ -n "$bad" ]; then
    echo "gpu-wheels.sh: not pure-Python, may not install on the GPU machine: $bad" >&2
    exit 1
fi
ls -1 "$DEST"
echo "gpu-wheels.sh: ${#pins[@]} wheels in $DEST ($(du -sh "$DEST" | cut -f1)); carry it with the device run: carry [\"$DEST\"]"
