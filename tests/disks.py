"""A small disk to fill: a tmpfs mounted for one test (root only; skipped elsewhere)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(path: Path, megabytes: int, *, owner: str | None = None) -> Iterator[Path]:
    """A tmpfs of ``megabytes`` at ``path`` (owned by ``owner`` if given), unmounted at the
    end; the test is skipped, saying why, only where mounting is impossible."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        if owner is not None:
            shutil.chown(path, owner)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, capture_output=True)


def fill(disk: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free space)."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * chunk)
    finally:
        os.close(descriptor)
    return filler
