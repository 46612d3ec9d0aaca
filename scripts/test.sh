#!/usr/bin/env bash
# Sets up .venv with Atoll and its development tools, then runs every check and the test suite.
#   scripts/test.sh          every check and every test (what CI runs)
#   scripts/test.sh --fast   every check and the fast tier: unit, integration on SQLite and
#                            the e2e tests of the in-process app (pytest -m "not slow"; no
#                            real server, process, Chromium, PostgreSQL or Redis): docs/testing.md
# Extra arguments go to pytest (e.g. scripts/test.sh -m unit -x, scripts/test.sh --fast -x);
# ATOLL_TEST_WORKERS sets the pytest-xdist workers of the whole suite (default 2; 0: none).
set -euo pipefail
cd "$(dirname "$0")/.."
fast=false
if [ "${1:-}" = "--fast" ]; then
    fast=true
    shift
fi
bash scripts/venv.sh dev

# What the slow tiers need: PostgreSQL, redis-server, Chromium, and Node for the OpenID
# Provider (the fast tier needs none of them).
system_packages() {
    # PostgreSQL for the tests that run on it (the tests start and stop their own server).
    if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            echo "== installing PostgreSQL (apt-get)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        else
            echo "PostgreSQL is needed for the tests: install the Debian package 'postgresql'." >&2
            exit 2
        fi
    fi

    # redis-server for the scale-out tests (they start and stop their own).
    if ! command -v redis-server >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            echo "== installing redis-server (apt-get)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
        else
            echo "redis-server is needed for the tests: install the Debian package 'redis-server'." >&2
            exit 2
        fi
    fi

    # Debian's Chromium for the browser tests (Playwright drives it; it downloads no browser).
    if ! command -v chromium >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            echo "== installing Chromium (apt-get)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
        else
            echo "Chromium is needed for the browser tests: install the Debian package 'chromium'." >&2
            exit 2
        fi
    fi

    # Node and npm for the OpenID Provider of the sign-in tests (tests/oidc: node-oidc-provider,
    # installed with `npm ci` from its lock file, integrity-checked, by the tests themselves).
    if ! command -v npm >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            echo "== installing Node.js and npm (apt-get)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
        else
            echo "Node.js and npm are needed for the sign-in tests: install the Debian packages 'nodejs' and 'npm'." >&2
            exit 2
        fi
    fi
    (cd tests/oidc && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
}

if [ "$fast" = false ]; then
    system_packages
fi

echo "== ruff"
.venv/bin/ruff check src tests bench scripts examples
.venv/bin/ruff format --check src tests bench scripts examples
echo "== mypy --strict"
.venv/bin/mypy src
echo "== import-linter"
.venv/bin/lint-imports
echo "== atoll ssot scan (our own code stays at zero findings)"
.venv/bin/atoll ssot scan --fail-on warning
if [ "$fast" = true ]; then
    echo "== pytest, the fast tier"
    .venv/bin/pytest -m "not slow" "$@"
else
    # The whole suite mostly waits (on servers, processes, Chromium): two pytest-xdist
    # workers, each module on one of them (its module fixtures start once), and each
    # worker's ports its own (scripts/ports.py). ATOLL_TEST_WORKERS=0: one process.
    workers=${ATOLL_TEST_WORKERS:-2}
    echo "== pytest ($workers workers)"
    if [ "$workers" -gt 0 ]; then
        .venv/bin/pytest -n "$workers" --dist loadfile "$@"
    else
        .venv/bin/pytest "$@"
    fi
fi
