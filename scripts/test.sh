#!/usr/bin/env bash
# Sets up .venv with Atoll and its development tools, then runs every check and the test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -m unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Atoll needs Python >= 3.11 (found $("$python" --version 2>&1)); set PYTHON=..." >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"

echo "== ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "== mypy --strict"
.venv/bin/mypy src
echo "== import-linter"
.venv/bin/lint-imports
echo "== pytest"
.venv/bin/pytest "$@"
