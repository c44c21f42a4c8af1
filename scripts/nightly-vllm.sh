#!/usr/bin/env bash
# The nightly gate of backend vllm (docs/backends.md, "vllm"): builds vLLM's environment if needed (~3.5 GB, once
# per machine), then verifies the embedded pages of both families on vLLM's engine with a 2-layer decoder (the
# vision stack at full size; the analytic model is told the same depth) and exits non-zero when either fails.
# About 6 minutes a family on 2 cores (AVX2, float32) after the environment exists; ~10 GiB of memory.
#
#   bash scripts/nightly-vllm.sh [extra run_verify_end2end options, e.g. --limit 4 --decode-tokens 64]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-vllm
. .venv/bin/activate
rc=0
for model in deepseek-ocr deepseek-ocr-2; do
    run_verify_end2end --backend vllm --model "$model" --decoder-layers "${DSOCR_VLLM_LAYERS:-2}" "$@" || rc=$?
done
exit "$rc"
