"""A plugin of CPU-bound tools (plain ``def``) for the tests: bombs, failures, a spinner agent.

Importable as ``cpu_tools`` (``tests/plugins`` is on the path of the tests and of
the servers they start), so the tool process pool's workers find the functions.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from atoll import Agent, tool
from atoll.errors import ToolError
from atoll.runtime.agents.base import AgentRegistry, AgentRunContext


@tool(timeout=2.0)
def spin(seconds: float) -> dict[str, Any]:
    """Keeps a core busy for ``seconds`` (a CPU bomb that never yields)."""
    end = time.perf_counter() + seconds
    turns = 0
    while time.perf_counter() < end:
        turns += 1
    return {"turns": turns, "pid": os.getpid()}


@tool
def hold(started: str, until: str = "", seconds: float = 3600.0) -> int:
    """Writes its process id to the file ``started``, then keeps a core busy until the file
    ``until`` exists (or ``seconds`` pass): a CPU-bound call whose start and end a test
    sees and decides, whatever the machine's pace."""
    Path(f"{started}.part").write_text(str(os.getpid()))
    os.replace(f"{started}.part", started)
    end = time.perf_counter() + seconds
    turns = 0
    while time.perf_counter() < end:
        turns += 1
        if until and turns % 10_000 == 0 and os.path.exists(until):
            break
    return os.getpid()


@tool
def whose_process() -> int:
    """The id of the process the tool runs in."""
    return os.getpid()


@tool
def refuse(reason: str) -> None:
    """Fails the way a tool reports an error to the user."""
    raise ToolError(reason)


@tool
def crash() -> None:
    """Fails the way a bug does."""
    raise ValueError("a bug")


@tool
def hog(megabytes: int) -> int:
    """Allocates ``megabytes`` of memory."""
    return len(bytearray(megabytes * 1024 * 1024))


class Spinner(Agent):
    """Calls ``spin`` for as many seconds as the message says."""

    name = "spinner"
    description = "Keeps the CPU busy in a tool for the given number of seconds (default 1)."
    tools = ("spin",)

    async def run(self, run: AgentRunContext) -> str:
        seconds = float(run.input) if run.input.strip().isdecimal() else 1.0
        result = await run.tools.call("spin", {"seconds": seconds})
        return "spun" if result.ok else f"spin failed: {(result.error or {}).get('code')}"


def register(registry: AgentRegistry) -> None:
    registry.register_agent(Spinner)
    registry.register_tools([spin, hold, whose_process, refuse, crash, hog])
