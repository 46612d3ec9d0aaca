"""A throwaway PostgreSQL server for tests: initdb in a temp dir, a free loopback port.

The test setup installs PostgreSQL (scripts/test.sh); this finds its binaries,
runs them as the ``postgres`` user when the tests run as root (PostgreSQL
refuses to run as root), and stops the server at the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ports import free_port


def _binary(name: str) -> str:
    # Debian's versioned binaries first (its /usr/bin wrappers want a configured cluster).
    found = next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    ) or shutil.which(name)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (scripts/test.sh installs it)")
    return found


def _as_owner(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


class PostgresProcess:
    """A throwaway PostgreSQL server: its data directory, port, and how to stop and start it
    (for tests of an outage: ``stop`` leaves it down until ``start``)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="atoll-pg-"))
        self.data = self.root / "data"
        self.data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.data, "postgres")
        self.port = free_port()
        self.url = f"postgresql+asyncpg://atoll@127.0.0.1:{self.port}"
        """libpq-style base URL (``create_database`` adds a database to it)."""
        subprocess.run(
            _as_owner([_binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", "atoll"]),
            check=True, capture_output=True,
        )  # fmt: skip

    def _ctl(self, *action: str, check: bool = True) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_owner([_binary("pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                       str(self.root / "server.log"), *action]),
            check=check, capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        self._ctl("-w", "start")

    def stop(self) -> None:
        """Stop it at once (``-m immediate``: as if it crashed; recovery runs on start)."""
        self._ctl("-m", "immediate", "-w", "stop", check=False)

    def restart(self) -> None:
        """``pg_ctl -m immediate restart``: crash and come back, waiting until it accepts."""
        self._ctl("-m", "immediate", "-w", "restart")

    def remove(self) -> None:
        """Stop it and delete its files."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_process() -> Iterator[PostgresProcess]:
    """A started ``PostgresProcess``, stopped and removed at the end."""
    server = PostgresProcess()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start PostgreSQL; yields a libpq-style base URL ``postgresql+asyncpg://atoll@host:port``."""
    with postgres_process() as server:
        yield server.url


def create_database(base_url: str) -> str:
    """A fresh, empty database on the server; returns its URL."""
    name = f"atoll_{time.monotonic_ns()}"
    host_port = base_url.rsplit("@", 1)[1]
    host, port = host_port.split(":")
    subprocess.run(
        [_binary("createdb"), "-h", host, "-p", port, "-U", "atoll", name],
        check=True, capture_output=True,
    )  # fmt: skip
    return f"{base_url}/{name}"
