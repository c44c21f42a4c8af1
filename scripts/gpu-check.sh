#!/usr/bin/env bash
# The whole GPU check in one call (about 8 minutes at most on an H200): on a machine with a CUDA torch,
# transformers, pandas, rich and matplotlib but no package registry, it installs the missing pure-Python
# wheels it brings (.whl/, made beforehand by scripts/gpu-wheels.sh), then per model family
# (deepseek-ocr, deepseek-ocr-2; backend hf; embedded pages):
#
#   1. the gate on the device: --device cuda, real arithmetic, bfloat16 (what --execution/--dtype auto mean there);
#   2. the same pages on CPU (vision on meta, shapes-only), same dtype;
#   3. the same pages on the device shapes-only (balanced routing, as on CPU: the device is then the only change);
#   4. dsocr-diff CPU -> device (shapes-only) and CPU -> device (real): which stages and ops differ (its exit 1,
#      "a gated figure differs", is recorded as a finding, not a failed step);
#
# then a table per stage: tensor-level peak (measured and modeled) next to the CUDA allocator's peak, and the
# stage's wall time on the device (verify/gpu_summary.py). Every step's exit code goes into summary.tsv; a failing
# step never stops the ones after it; a step that would outlast the time budget is skipped and says so.
#
#   bash scripts/gpu-wheels.sh                                   # here, once: fetch the wheels into .whl/
#   bash scripts/gpu-check.sh                                    # on the GPU machine (device tool: carry [".whl"])
#   bash scripts/gpu-check.sh --dry-run                          # the same steps on CPU, one page: the plumbing
#
# Env: OUT (default runs/gpu-check), DSOCR_GPU_CHECK_DEVICE (cuda; cpu = --dry-run), DSOCR_GPU_CHECK_BUDGET_S
# (450: no step starts after it, a running one is cut at it), DSOCR_GPU_CHECK_LIMIT (pages: 2, dry run 1),
# DSOCR_GPU_CHECK_DTYPE (bfloat16 on cuda, auto on the dry run), PYTHON (python3).
# Exit: 0 every step passed, 1 otherwise (summary.tsv says which).
set -u
cd "$(dirname "$0")/.." || exit 2
DEVICE=${DSOCR_GPU_CHECK_DEVICE:-cuda}
[ "${1:-}" = "--dry-run" ] && DEVICE=cpu
if [ "$DEVICE" = cuda ]; then LIMIT_DEFAULT=2 DTYPE_DEFAULT=bfloat16; else LIMIT_DEFAULT=1 DTYPE_DEFAULT=auto; fi
LIMIT=${DSOCR_GPU_CHECK_LIMIT:-$LIMIT_DEFAULT}
DTYPE=${DSOCR_GPU_CHECK_DTYPE:-$DTYPE_DEFAULT}
BUDGET=${DSOCR_GPU_CHECK_BUDGET_S:-450}
DECODE=4
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu-check}
FAMILIES=(deepseek-ocr deepseek-ocr-2)
mkdir -p "$OUT/logs" || exit 2
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.tsv"
printf 'step\texit\tseconds\tlast line\n' >"$SUMMARY"
export PYTHONPATH="$PWD:$OUT/pydeps"  # this checkout first, then the wheels installed below
export DSOCR_CACHE_DIR="$OUT/cache"   # nothing outside $OUT is written
START=$SECONDS
FAILED=0

step() {  # step NAME TIMEOUT_S CMD...: run with a timeout, log it, record its exit code (OK_CODES: "0")
    local name=$1 limit=$2 left rc t0 last ok=" ${OK_CODES:-0} "
    shift 2
    left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -le 5 ]; then
        printf '%s\tskipped\t0\tskipped: the %ss budget is spent\n' "$name" "$BUDGET" >>"$SUMMARY"
        FAILED=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most ${limit}s)"
    t0=$SECONDS
    timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >"$OUT/logs/$name.log" 2>&1
    rc=$?
    [ "$rc" -eq 124 ] && echo "step cut after ${limit}s" >>"$OUT/logs/$name.log"
    last=$(grep -v '^[[:space:]]*$' "$OUT/logs/$name.log" | tail -n 1 | tr '\t' ' ' | cut -c1-200)
    [ "$rc" -eq 1 ] && [[ "$ok" == *" 1 "* ]] && rc="1 (differs)"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$last" >>"$SUMMARY"
    [[ "$ok" == *" ${rc%% *} "* ]] || FAILED=1
    echo "   exit $rc: $last"
}

py_main() {  # py_main MODULE FUNCTION ARGS...: a console script without installing the project
    local module=$1 func=$2
    shift 2
    "$PY" -c "import sys; from $module import $func; sys.exit($func())" "$@"
}

environment() {  # what this machine has, and the transformers release against the tested one
    "$PY" - <<'PYEOF'
import importlib.metadata as md, platform, re
import torch
tested = dict(re.findall(r"^([\w.-]+)==(\S+)", open("constraints/tested.txt").read(), re.M))
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("transformers", "tokenizers", "huggingface-hub", "safetensors", "pandas", "rich", "matplotlib",
             "hydra-core", "omegaconf", "fvcore"):
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = "missing"
    note = "" if tested.get(name) in (None, have) else f" (tested: {tested[name]})"
    print(f"{name} {have}{note}")
PYEOF
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    return 0
}

install_wheels() {  # the brought wheels whose module this python lacks, unpacked into $OUT/pydeps
    local wheel module missing=0
    mkdir -p "$OUT/pydeps"
    for wheel in .whl/*.whl; do
        [ -e "$wheel" ] || { echo "no wheels in .whl/: run scripts/gpu-wheels.sh first and carry .whl"; return 1; }
        module=$(basename "$wheel" | cut -d- -f1)
        case "$module" in
            hydra_core) module=hydra ;;
            antlr4_python3_runtime) module=antlr4 ;;
        esac
        if "$PY" -c "import $module" >/dev/null 2>&1; then
            echo "have $module"
            continue
        fi
        "$PY" -m zipfile -e "$wheel" "$OUT/pydeps" && echo "installed $(basename "$wheel")" || missing=1
    done
    "$PY" -c "import hydra, omegaconf, antlr4, fvcore; print('imports ok: hydra, omegaconf, antlr4, fvcore')" \
        || missing=1
    return $missing
}

export PY OUT
export -f py_main environment install_wheels  # steps run them in a child bash under timeout
echo "gpu-check: device $DEVICE, $LIMIT page(s), $DECODE decode tokens, dtype $DTYPE, output $OUT, budget ${BUDGET}s"
step environment 60 environment
step install-wheels 60 install_wheels
COMMON=(--limit "$LIMIT" --decode-tokens "$DECODE" --dtype "$DTYPE" --no-cache --quiet)
for fam in "${FAMILIES[@]}"; do
    # 1. the gate on the device (auto: real arithmetic on cuda, shapes-only on the dry run; vision on the device)
    step "$fam-$DEVICE-gate" 150 py_main verify.cli main_end2end --model "$fam" --device "$DEVICE" \
        --vision-device same "${COMMON[@]}" --output-dir "$OUT/$fam/$DEVICE-gate"
    # 2. the same pages on CPU as the CPU gate counts them (vision on meta, shapes-only)
    step "$fam-cpu" 120 py_main verify.cli main_end2end --model "$fam" --device cpu "${COMMON[@]}" \
        --output-dir "$OUT/$fam/cpu"
    # 3. the device shapes-only: the routing of the CPU run, so the device is the only change (the dry run's
    #    gate is shapes-only already)
    shapes="$OUT/$fam/$DEVICE-gate"
    if [ "$DEVICE" != cpu ]; then
        shapes="$OUT/$fam/$DEVICE-shapes"
        step "$fam-$DEVICE-shapes" 120 py_main verify.cli main_end2end --model "$fam" --device "$DEVICE" \
            --vision-device same --execution shapes "${COMMON[@]}" --output-dir "$shapes"
    fi
    # 4. what differs, CPU -> device (exit 1 = a gated figure differs: a finding, not a failure of the check)
    OK_CODES="0 1" step "$fam-diff-cpu-$DEVICE-shapes" 60 py_main drift.cli main "$OUT/$fam/cpu" "$shapes" \
        --out "$OUT/$fam/diff-cpu-$DEVICE-shapes"
    if [ "$DEVICE" != cpu ]; then
        OK_CODES="0 1" step "$fam-diff-cpu-$DEVICE-real" 60 py_main drift.cli main "$OUT/$fam/cpu" \
            "$OUT/$fam/$DEVICE-gate" --out "$OUT/$fam/diff-cpu-$DEVICE-real"
    fi
done
runs=()
for fam in "${FAMILIES[@]}"; do
    for kind in gate shapes; do
        [ -d "$OUT/$fam/$DEVICE-$kind" ] && runs+=("$OUT/$fam/$DEVICE-$kind")
    done
done
step peaks 60 "$PY" -m verify.gpu_summary "${runs[@]}" --out "$OUT/peaks.md"

echo
echo "== summary ($OUT/summary.tsv; logs in $OUT/logs; peaks table in $OUT/peaks.md)"
column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
grep -E '^transformers|^torch|^python' "$OUT/logs/environment.log" 2>/dev/null | head -n 3
echo "gpu-check: $( [ "$FAILED" -eq 0 ] && echo 'every step passed' || echo 'some step failed or was skipped' ) in $((SECONDS - START))s"
exit "$FAILED"
