"""How much space a full SQLite disk needs freed before `atoll serve` writes again.

Each trial mounts a small tmpfs (root only), puts a ballast file on it, starts
`atoll serve` with its data directory there, and writes threads (15 KB of metadata each)
until the disk is full and writes answer 503 `storage_full`. Then it frees the ballast
a step at a time and, after each step, tries 20 small writes: how many pass, and how
large the database file and its WAL are. Tmpfs sizes differ between trials so the disk
fills at different points of SQLite's checkpoint cycle.

What it shows (docs/operations.md, "A full disk"): a write commits only if the WAL can
take it, and the WAL restarts from its beginning only once a checkpoint has copied it
into the database file. Freed space smaller than what that checkpoint must add to the
database file is eaten by the checkpoint (the file grows, the checkpoint still fails)
and writes stay refused; once the freed space covers it, writes pass and keep passing.
The WAL's own size bounds what the checkpoint can need.

    sudo python bench/full_disk.py [--sizes 29,30,32] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from report import RELIABILITY, write_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from ports import free_port  # noqa: E402

PASSWORD = "correct horse battery"
BALLAST_MB = 8
STEPS_KB = (256, 512, 768, 1024, 1280, 1536, 1792, 2048, 3072, 4096, 6144, 8192)
MAX_WRITES = 5_000
"""Bound on the writes that fill a disk (a 32 MiB tmpfs takes about 1,300)."""


@contextlib.contextmanager
def tmpfs(megabytes: int) -> Iterator[Path]:
    """A tmpfs of ``megabytes``, unmounted at the end."""
    path = Path(tempfile.mkdtemp(prefix="atoll-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                   check=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
        path.rmdir()


@contextlib.contextmanager
def serve(data: Path) -> Iterator[str]:
    """``atoll serve`` on ``data`` (its log beside it, off the tmpfs); yields its URL."""
    port = free_port()
    env = {**os.environ, "ATOLL_DATA_DIR": str(data), "ATOLL_MIN_FREE_MB": "0",
           "ATOLL_MESSAGES_PER_MINUTE": "1000000"}  # fmt: skip
    with open(data.parent / f"{data.name}.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "atoll.cli", "serve", "--port", str(port)],
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        process.kill()
        process.wait()


def sizes(data: Path) -> dict[str, int]:
    """KiB of the database file and its WAL, and KiB free on the file system."""

    def kib(name: str) -> int:
        path = data / name
        return path.stat().st_size // 1024 if path.exists() else 0

    free = os.statvfs(data)
    return {"db_kib": kib("atoll.db"), "wal_kib": kib("atoll.db-wal"),
            "free_kib": free.f_bavail * free.f_frsize // 1024}  # fmt: skip


async def trial(megabytes: int) -> dict[str, Any]:
    with tmpfs(megabytes) as data:
        ballast = data / "ballast"
        ballast.write_bytes(os.urandom(BALLAST_MB << 20))
        with serve(data) as url:
            async with httpx.AsyncClient(base_url=f"{url}/api/v1", timeout=30) as http:
                body = {"email": "ada@example.com", "password": PASSWORD}
                token = (await http.post("/auth/register", json=body)).json()["access_token"]
                http.headers["Authorization"] = f"Bearer {token}"
                written = 0
                while written < MAX_WRITES:
                    answer = await http.post("/threads", json={"metadata": {"k": "x" * 15_000}})
                    if answer.status_code != 201:
                        break
                    written += 1
                full = {"writes": written, "code": answer.json()["code"], **sizes(data)}
                steps = []
                for freed in STEPS_KB:
                    os.truncate(ballast, max(0, (BALLAST_MB << 20) - (freed << 10)))
                    passed = 0
                    for _ in range(20):
                        passed += (await http.post("/threads", json={})).status_code == 201
                    steps.append({"freed_kib": freed, "writes_passed": passed, **sizes(data)})
    recovered = next((s["freed_kib"] for s in steps if s["writes_passed"] == 20), None)
    return {"tmpfs_mib": megabytes, "full": full, "recovered_at_kib": recovered,
            "checkpoint_grew_db_kib": steps[-1]["db_kib"] - full["db_kib"],
            "steps": steps}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="29,30,32", help="tmpfs sizes (MiB), one trial each")
    parser.add_argument("--write", action="store_true", help="write docs/reliability.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("mounting a tmpfs needs root")
    trials = [asyncio.run(trial(int(size))) for size in args.sizes.split(",")]
    for result in trials:
        steps = ", ".join(f"{s['freed_kib']}:{s['writes_passed']}" for s in result["steps"])
        print(f"{result['tmpfs_mib']} MiB: full at {result['full']}; freed KiB:passed {steps}")
    if args.write:
        write_section("full-disk", f"python bench/full_disk.py --sizes {args.sizes}",
                      {"trials": trials}, doc=RELIABILITY)  # fmt: skip


if __name__ == "__main__":
    main()
