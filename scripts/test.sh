#!/usr/bin/env bash
# Sets up (idempotent), then lints and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
set +e
# two workers by default (pytest-xdist): the suite is mostly model builds and CLI subprocesses, one core each;
# DSOCR_TEST_WORKERS=0 runs it in one process (e.g. to debug with -x or pdb)
workers=${DSOCR_TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then
    python -m pytest -q "$@"
else
    python -m pytest -q -n "$workers" "$@"
fi
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a broken checkout, not a pass" >&2
    exit 1
fi
exit "$rc"
