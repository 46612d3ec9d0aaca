"""A plugin whose import takes longer than its tools' timeout, as a heavy library's would.

Importing it sleeps ``IMPORT_SECONDS``; its ``add_one`` tool has a 1 s timeout.
A tool's timeout counts from the moment its worker is ready, so the first call
must succeed although the worker's import alone outlasts the timeout.
"""

from __future__ import annotations

import time

from atoll import tool

IMPORT_SECONDS = 1.5
time.sleep(IMPORT_SECONDS)  # a heavy import (a model library, a big table)


@tool(timeout=1.0)
def add_one(x: int) -> int:
    """Adds one (fast, once the module is imported)."""
    return x + 1


@tool(timeout=1.0)
def stall(seconds: float) -> float:
    """Sleeps ``seconds`` (past its timeout: its worker is killed)."""
    time.sleep(seconds)
    return seconds
