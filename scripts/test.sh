#!/usr/bin/env bash
# Sets up .venv with Atoll and its development tools, then runs every check and the test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -m unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh dev

echo "== ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "== mypy --strict"
.venv/bin/mypy src
echo "== import-linter"
.venv/bin/lint-imports
echo "== pytest"
.venv/bin/pytest "$@"
