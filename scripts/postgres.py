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


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start PostgreSQL; yields a libpq-style base URL ``postgresql+asyncpg://atoll@host:port``."""
    root = Path(tempfile.mkdtemp(prefix="atoll-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run(
        _as_owner([_binary("initdb"), "-D", str(data), "-A", "trust", "-U", "atoll"]),
        check=True, capture_output=True,
    )  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        _as_owner([_binary("pg_ctl"), "-D", str(data), "-o", options, "-l",
                   str(root / "server.log"), "-w", "start"]),
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield f"postgresql+asyncpg://atoll@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_owner([_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            check=False, capture_output=True,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


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
