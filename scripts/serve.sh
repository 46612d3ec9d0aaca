#!/usr/bin/env bash
# Sets up .venv and runs `atoll serve` on its embedded defaults (SQLite in ./atoll-data,
# in-process bus, offline model) at http://127.0.0.1:8000. Arguments go to `atoll serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/atoll serve "$@"
