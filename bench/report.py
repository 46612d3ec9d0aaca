"""Writes a benchmark's result into docs/benchmarks.md, between its own markers."""

from __future__ import annotations

import json
import platform
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
RELIABILITY = DOC.with_name("reliability.md")


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``, rounded to µs; 0 when empty."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else 0.0


def machine() -> str:
    """A one-line description of the machine the benchmark ran on."""
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        if match:
            cpu = match.group(1).strip()
    cores = len(__import__("os").sched_getaffinity(0))
    return f"{cpu}, {cores} cores, Python {platform.python_version()}, {platform.system()}"


ONE_ADDRESS = {
    "ATOLL_MAX_SOCKETS_PER_ADDRESS": "100000",
    "ATOLL_MAX_UNAUTHENTICATED_SOCKETS_PER_ADDRESS": "100000",
}
"""Every load client connects from 127.0.0.1: the per-address socket caps raised for it."""


def write_section(name: str, command: str, result: dict[str, Any], *, doc: Path = DOC) -> None:
    """Replace the ``<!-- bench:name -->`` section of ``doc`` with ``result``."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = (
        f"<!-- bench:{name} -->\n"
        f"Command: `{command}`  \n"
        f"Machine: {machine()}  \n"
        f"Measured: {stamp}\n\n"
        f"```json\n{json.dumps(result, indent=2)}\n```\n"
        f"<!-- /bench:{name} -->"
    )
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: body, text)
    else:
        text = text.rstrip() + f"\n\n{body}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")
    print(f"wrote section {name!r} of {doc}", file=sys.stderr)


def start_profile(pid: int, output: Path | None) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of the server into ``output`` (raw collapsed stacks), if asked."""
    if output is None:
        return None
    command = ["py-spy", "record", "-p", str(pid), "-r", "200", "--nonblocking",
               "--format", "raw", "-o", str(output)]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(timeout=60)
