"""A free loopback port, for the servers tests and benchmarks start."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
