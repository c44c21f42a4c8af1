#!/usr/bin/env bash
# A light venv for another supported release, laid over an installed one: it holds only the pins its release file
# names (constraints/<release>.txt, installed without their dependencies) and reads everything else, this checkout
# included, from the base venv. The result is the merged set `python -m verify.depset merge` describes, in seconds
# instead of a full install (CI gates the range with it). A full, independent venv: DSOCR_DEPS=<release> setup.sh.
#
#   bash scripts/overlay-venv.sh transformers-5.23 [BASE_VENV (.venv)] [OVERLAY_VENV (.venv-<release>)]
#   .venv-transformers-5.23/bin/python -m verify.cli end2end ...   (the console scripts live in the base venv)
set -euo pipefail
cd "$(dirname "$0")/.."
RELEASE=${1:?usage: overlay-venv.sh RELEASE [BASE_VENV] [OVERLAY_VENV]}
BASE=${2:-.venv}
OVERLAY=${3:-.venv-$RELEASE}
if [ ! -f "constraints/$RELEASE.txt" ] || [ "$RELEASE" = tested ]; then
    echo "overlay-venv.sh: no release file constraints/$RELEASE.txt: use one of $(python3 -m verify.depset ends)" >&2
    exit 2
fi
[ -x "$BASE/bin/python" ] || { echo "overlay-venv.sh: $BASE is not a venv: run scripts/setup.sh first" >&2; exit 2; }
rm -rf "$OVERLAY"
"$BASE/bin/python" -m venv --without-pip "$OVERLAY"
site_of() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
own=$(site_of "$OVERLAY")
# after the overlay's own packages: the base venv's (its .pth files are processed too: the editable checkout)
"$OVERLAY/bin/python" - "$own" "$(site_of "$BASE")" <<'EOF'
import sys
from pathlib import Path
own, base = sys.argv[1:]
Path(own, "zz_dsocr_base_venv.pth").write_text(f"import site; site.addsitedir({base!r})\n")
EOF
mapfile -t pins < <(grep -E '^[A-Za-z0-9]' "constraints/$RELEASE.txt")
"$BASE/bin/python" -m pip install -q --no-deps --target "$own" "${pins[@]}"
echo "$RELEASE" >"$OVERLAY/dsocr-deps"
"$OVERLAY/bin/python" -c "import transformers; print('overlay $OVERLAY: transformers', transformers.__version__)"
