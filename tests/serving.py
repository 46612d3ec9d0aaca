"""Running a real Atoll server for tests: in-process uvicorn, or an `atoll serve` process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from atoll.config import Settings
from atoll.store.db import MIGRATIONS, Database

from ports import free_port

PASSWORD = "correct horse battery"


def migrations_key() -> str:
    """A digest of the migrations (every file Alembic reads)."""
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(MIGRATIONS).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


TEST_SIGNUPS_PER_HOUR = 100_000
"""Every test user signs up from 127.0.0.1: tests that check the sign-up limit set their own."""
TEST_PASSWORD_COST = {"password_time_cost": 1, "password_memory_kib": 64}
"""A cheap argon2id for the tests' thousands of sign-ups and logins (production: 2 passes
over 19 MiB, about 0.2 s on this machine's cores); tests of the cost set their own."""
TEST_SHUTDOWN_GRACE = 0.0
"""A test's server stops at the end of the test: what still runs then is cancelled at
once instead of being given 10 s (tests of the grace set their own)."""
TEMPLATE = Path(tempfile.gettempdir()) / f"atoll-tests-{migrations_key()}.db"
"""A SQLite file migrated to head by ``build_template`` (once per test session), which
``make_settings`` copies into a new data directory: its server then finds the schema
current and applies no migration. The name carries a digest of the migrations, so a
file built from other migrations is never used."""


def build_template() -> None:
    """Migrate a new SQLite file to head and put it at ``TEMPLATE`` (atomically)."""
    building = TEMPLATE.with_name(f"{TEMPLATE.stem}-{os.getpid()}.building")
    building.unlink(missing_ok=True)

    async def migrate() -> None:
        db = Database(f"sqlite+aiosqlite:///{building}")
        try:
            await db.upgrade()
        finally:
            await db.dispose()

    asyncio.run(migrate())
    with contextlib.closing(sqlite3.connect(building)) as single_file:
        single_file.execute("PRAGMA journal_mode=DELETE")  # the WAL folded in: one file to copy
    os.replace(building, TEMPLATE)


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server in ``data_dir``; on SQLite, a new data directory
    starts with the migrated ``TEMPLATE``."""
    overrides.setdefault("signups_per_hour", TEST_SIGNUPS_PER_HOUR)
    overrides.setdefault("shutdown_grace", TEST_SHUTDOWN_GRACE)
    for name, cost in TEST_PASSWORD_COST.items():
        overrides.setdefault(name, cost)
    settings = Settings(data_dir=data_dir, **overrides)
    database = data_dir / "atoll.db"
    if settings.database_url is None and TEMPLATE.exists() and not database.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TEMPLATE, database)
    return settings


class ServeProcess:
    """``atoll serve`` (or, with ``command="worker"``, ``atoll worker``) as a child process."""

    def __init__(self, data_dir: Path, *, command: str = "serve", **env: str) -> None:
        self.data_dir = data_dir
        self.command = command
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "ATOLL_SIGNUPS_PER_HOUR": str(TEST_SIGNUPS_PER_HOUR),
            **{f"ATOLL_{name.upper()}": str(cost) for name, cost in TEST_PASSWORD_COST.items()},
            **os.environ,
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{command}-{self.port}.log"

    def log_text(self) -> str:
        """What the server has logged so far."""
        return self.log_path.read_text(errors="replace")

    def start(self) -> None:
        """Start and wait until it is ready (/readyz answers 200; a worker logs "ready")."""
        command = [
            sys.executable,
            "-m",
            "atoll.cli",
            self.command,
            "--data-dir",
            str(self.data_dir),
        ]
        if self.command == "serve":
            command += ["--port", str(self.port)]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"atoll {self.command} exited with {self.process.returncode}")
            if self.command == "worker":
                if " ready (" in self.log_text()[offset:]:
                    return
            else:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                        return
            time.sleep(0.1)
        raise RuntimeError(f"atoll {self.command} did not become ready in 30 s")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (0: none) to the process (ours, by pid) and wait for it to exit."""
        assert self.process is not None
        if sig:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=60)
        self.process = None
        return code

    def kill(self) -> None:
        """Kill the process (ours, by pid) if it is still running."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@contextlib.contextmanager
def serve_process(data_dir: Path, **env: str) -> Iterator[ServeProcess]:
    """A started ``atoll serve``; killed at the end if still running."""
    server = ServeProcess(data_dir, **env)
    server.start()
    try:
        yield server
    finally:
        server.kill()
