#!/usr/bin/env bash
# Sets up (idempotent), then lints and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a broken checkout, not a pass" >&2
    exit 1
fi
exit "$rc"
