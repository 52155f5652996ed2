#!/usr/bin/env bash
# Runs every check CI runs: setup (a no-op when done), lint, types, then the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -m unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "==> ruff"; .venv/bin/ruff check .
echo "==> mypy"; .venv/bin/mypy
echo "==> pytest"; exec .venv/bin/python -m pytest "$@"
