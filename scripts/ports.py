"""A free loopback port, for the servers tests and benchmarks start."""

from __future__ import annotations

import os
import random
import socket

WORKER_BASE = 10_000
WORKER_PORTS = 4_000
"""Ports each pytest-xdist worker chooses from: worker N has [10000 + N*4000, +4000) (for
N up to 4, then again from the first), all below Linux's ephemeral range (32768 on),
which ``bind(("127.0.0.1", 0))`` draws from."""
WORKER_RANGES = (32_768 - WORKER_BASE) // WORKER_PORTS


def free_port() -> int:
    """A free loopback port.

    It is chosen now and bound later by a server, maybe another process: under
    pytest-xdist each worker draws from its own range, so two workers never choose the
    same port in that time, and none of them a port the kernel hands out for port 0.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1" ... under xdist
    if not worker.startswith("gw"):
        return _bound_port(0)
    low = WORKER_BASE + int(worker[2:]) % WORKER_RANGES * WORKER_PORTS
    for port in random.sample(range(low, low + WORKER_PORTS), WORKER_PORTS):
        try:
            return _bound_port(port)
        except OSError:
            continue
    raise RuntimeError(f"no free port in {low}..{low + WORKER_PORTS - 1}")


def _bound_port(port: int) -> int:
    """Bind ``port`` on loopback (0: any) and let it go again; the port bound."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))
        return int(probe.getsockname()[1])
