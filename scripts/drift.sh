#!/usr/bin/env bash
# Drift job: verifies the embedded page set with the tested dependency set and with the newest releases,
# then diffs the two runs, so a library upgrade that changes what the model executes shows up as
# "transformers X -> Y: stage S changed by N FLOPs (ops ...)" and one that changes nothing as "no change".
#
#   bash scripts/drift.sh                          # candidate = the newest releases
#   bash scripts/drift.sh transformers==5.24.0     # candidate = the newest, with these pins on top
#
# Both venvs keep (or get) the same torch: the local CPU build unless one is installed already.
# Env: DSOCR_TESTED_VENV (.venv), DSOCR_LATEST_VENV (.venv-latest), DSOCR_DRIFT_DIR (runs/drift/<UTC time>).
# Exit: 0 both gates pass and no gated metric differs; 1 a gate failed or something differs; 2 bad setup.
set -euo pipefail
cd "$(dirname "$0")/.."
TESTED=${DSOCR_TESTED_VENV:-.venv}
LATEST=${DSOCR_LATEST_VENV:-.venv-latest}
OUT=${DSOCR_DRIFT_DIR:-runs/drift/$(date -u +%Y%m%d-%H%M%S)}
if [ -e "$OUT" ]; then
    echo "drift.sh: $OUT already exists: remove it or set DSOCR_DRIFT_DIR to a new folder" >&2
    exit 2
fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # both venvs run this checkout's code
export DSOCR_CACHE_DIR="${DSOCR_CACHE_DIR:-$PWD/.cache}"  # rendered pages only: every gate runs --no-cache

setup() {  # setup VENV LOG [DEPS [PIN ...]]: quiet unless it fails
    local venv=$1 log=$2 deps=${3:-tested}
    shift $(($# < 3 ? $# : 3))
    if ! DSOCR_VENV="$venv" DSOCR_DEPS="$deps" bash scripts/setup.sh "$@" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "drift.sh: setting up $venv failed (log: $log): fix the install or the pins, then run again" >&2
        exit 2
    fi
}
echo "== setting up the tested set in $TESTED"
setup "$TESTED" "$OUT/setup-tested.log"
if ! "$TESTED/bin/python" -m verify.depset check >"$OUT/depset.txt"; then
    cat "$OUT/depset.txt" >&2
    echo "drift.sh: $TESTED does not hold the tested set: re-run scripts/setup.sh" >&2
    exit 2
fi
tail -n 1 "$OUT/depset.txt"
echo "== setting up the candidate in $LATEST: the newest releases${*:+, then $*}"
setup "$LATEST" "$OUT/setup-candidate.log" latest "$@"

versions() {
    "$1/bin/python" -c "from importlib.metadata import version as v; \
print(', '.join(f'{p} {v(p)}' for p in ('transformers', 'torch', 'tokenizers', 'huggingface-hub')))"
}

status=0
declare -A GATE
KINDS=(vision e2e e2e-bf16)
gate() {  # gate VENV NAME: vision-only on every embedded page, end to end on two pages (dtype auto, and bfloat16:
    # a release that changes how bfloat16 weights are kept or cast moves nothing in float32, the dtype auto picks on
    # a CPU without native bfloat16)
    local venv=$1 name=$2 rc
    for kind in "${KINDS[@]}"; do
        local cmd=(run_verify_end2end_vision)
        [ "$kind" = e2e ] && cmd=(run_verify_end2end --limit 2 --decode-tokens 4)
        [ "$kind" = e2e-bf16 ] && cmd=(run_verify_end2end --limit 2 --decode-tokens 4 --dtype bfloat16)
        rc=0
        "$venv/bin/${cmd[0]}" "${cmd[@]:1}" --quiet --no-cache --output-dir "$OUT/$name/$kind" \
            >"$OUT/$name-$kind.log" 2>&1 || rc=$?
        GATE[$name-$kind]="$(tail -n 1 "$OUT/$name-$kind.log") (exit $rc)"
        [ "$rc" -eq 0 ] || status=1
    done
}
echo "== gates (logs in $OUT)"
gate "$TESTED" tested
gate "$LATEST" candidate

declare -A DIFF
for kind in "${KINDS[@]}"; do
    rc=0
    DIFF[$kind]="$("$TESTED/bin/dsocr-diff" "$OUT/tested/$kind" "$OUT/candidate/$kind" --quiet --out "$OUT/diff-$kind" 2>&1)" \
        || rc=$?
    [ "$rc" -eq 0 ] || status=1
done

echo
echo "== drift report"
echo "tested: $(versions "$TESTED")"
echo "candidate: $(versions "$LATEST")"
for name in tested candidate; do
    echo "gate $name vision: ${GATE[$name-vision]}"
    echo "gate $name e2e (2 pages, 4 decode tokens): ${GATE[$name-e2e]}"
    echo "gate $name e2e in bfloat16: ${GATE[$name-e2e-bf16]}"
done
for kind in "${KINDS[@]}"; do
    echo "diff $kind (tested -> candidate): ${DIFF[$kind]}"
done
echo "reports: $OUT (diff-vision/diff.md, diff-e2e/diff.md, diff-e2e-bf16/diff.md)"
if [ "$status" -eq 0 ]; then
    echo "verdict: no drift: the candidate executes the same counted work and passes the gate"
else
    echo "verdict: DRIFT or a failing gate: read the diffs above, then model the change as one entry of"
    echo "  core/releases/hf.yaml (docs/dependencies.md, \"Upgrading transformers\")"
fi
exit "$status"
