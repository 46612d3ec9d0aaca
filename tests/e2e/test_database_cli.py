"""``atoll db upgrade|current|history`` say what they did, and every command that opens the
database refuses one migrated by a newer Atoll in one line, with exit status 2."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

VERSIONS = (
    Path(__file__).resolve().parents[2] / "src" / "atoll" / "store" / "migrations" / "versions"
)
REVISIONS = sorted(path.name.split("_", 1)[0] for path in VERSIONS.glob("[0-9]*.py"))
"""Every revision this code knows, oldest first (read from the files: no import of ours)."""
HEAD = REVISIONS[-1]


def atoll(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``atoll`` (bounded: a refusal must come at once, not after serving)."""
    return subprocess.run(
        [sys.executable, "-m", "atoll.cli", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip


def test_db_commands_say_what_they_did(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    head = HEAD

    empty = atoll("db", "current", "--data-dir", data)
    assert (empty.returncode, empty.stdout.splitlines()[0].split()[0]) == (0, "none")
    assert not (tmp_path / "data" / "atoll.db").exists()  # asking made no database

    first = atoll("db", "upgrade", "--data-dir", data)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == f"applied (empty) → {head}"
    assert [line.split()[0] for line in lines[1:]] == REVISIONS

    again = atoll("db", "upgrade", "--data-dir", data)
    assert (again.returncode, again.stdout.strip()) == (0, f"already at {head}")

    current = atoll("db", "current", "--data-dir", data)
    assert current.stdout.strip() == f"{head} (the newest this Atoll knows)"

    history = atoll("db", "history", "--data-dir", data)
    assert history.returncode == 0
    rows = history.stdout.splitlines()
    assert [row.split()[0] for row in rows] == REVISIONS
    assert rows[-1].endswith("(current)") and not any(r.endswith("(current)") for r in rows[:-1])
    assert rows[0] == "0001  initial schema"  # each with what it changed


def test_a_database_newer_than_the_code_is_refused_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert atoll("db", "upgrade", "--data-dir", str(data)).returncode == 0
    with sqlite3.connect(data / "atoll.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0999'")
    refusal = (
        f"atoll: the database is at revision 0999, newer than this Atoll (knows up to "
        f"{HEAD}): upgrade Atoll"
    )
    for command in (("db", "upgrade"), ("db", "current"), ("serve", "--port", "0")):
        done = atoll(*command, "--data-dir", str(data))
        assert (done.returncode, done.stderr.strip()) == (2, refusal), command
    history = atoll("db", "history", "--data-dir", str(data))
    assert (history.returncode, history.stderr.strip()) == (2, refusal)
    assert history.stdout.strip()  # what this Atoll knows is still listed
    # A worker logs as it starts; the refusal is still one line, and no traceback.
    worker = atoll("worker", "--data-dir", str(data), ATOLL_REDIS_URL="redis://127.0.0.1:9")
    assert worker.returncode == 2
    assert worker.stderr.strip().splitlines()[-1] == refusal
    assert "Traceback" not in worker.stderr
