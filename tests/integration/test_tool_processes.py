"""CPU-bound tools: they run in killable worker processes, never on the event loop.

Real worker processes (forkserver) run the plain-def tools of ``cpu_tools``;
the dispatcher is the real per-run dispatcher, emitting into a real in-memory
event log.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest

from atoll.runtime.builtins import builtin_registry
from atoll.runtime.tools.processes import ToolProcessPool

import cpu_tools
from support import Runtime, until

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool() -> AsyncIterator[ToolProcessPool]:
    pool = ToolProcessPool(2, per_user=1, memory_mb=512)
    yield pool
    await pool.aclose()


async def test_a_plain_def_tool_runs_in_another_process(pool: ToolProcessPool) -> None:
    assert cpu_tools.spin.cpu_bound and not builtin_registry().tools["calculator"].cpu_bound
    pid = await pool.call(cpu_tools.whose_process.fn, {}, user_id="usr_a")
    assert pid != os.getpid()
    assert psutil.Process(pid).ppid() != 0
    assert await pool.call(cpu_tools.whose_process.fn, {}, user_id="usr_a") == pid  # reused


async def test_cancelling_a_call_kills_its_process(pool: ToolProcessPool) -> None:
    call = asyncio.create_task(pool.call(cpu_tools.spin.fn, {"seconds": 60}, user_id="usr_a"))
    await until(lambda: pool._workers == 1 and not pool._idle, what="the call started")
    await asyncio.sleep(0.2)  # let the worker get into its loop
    busy = [c for c in psutil.Process().children(recursive=True) if c.cpu_percent(0.1) > 50]
    assert busy, "the spinning worker should be using a core"
    started = time.monotonic()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert time.monotonic() - started < 5
    assert pool.killed == 1 and pool._workers == 0
    await until(lambda: not any(p.is_running() and p.status() != "zombie" for p in busy))
    # The pool starts a fresh worker for the next call.
    assert (await pool.call(cpu_tools.spin.fn, {"seconds": 0.01}, user_id="usr_a"))["turns"] > 0


async def test_failures_come_back_as_tool_errors(pool: ToolProcessPool) -> None:
    from atoll.errors import ToolError

    with pytest.raises(ToolError, match="no thanks"):
        await pool.call(cpu_tools.refuse.fn, {"reason": "no thanks"}, user_id="usr_a")
    with pytest.raises(ToolError, match=r"crash failed \(ValueError\)"):
        await pool.call(cpu_tools.crash.fn, {}, user_id="usr_a")
    with pytest.raises(ToolError, match="out of memory"):
        await pool.call(cpu_tools.hog.fn, {"megabytes": 2048}, user_id="usr_a")
    assert await pool.call(cpu_tools.hog.fn, {"megabytes": 8}, user_id="usr_a") == 8 << 20


async def test_a_user_cannot_hold_the_pool_while_another_waits(pool: ToolProcessPool) -> None:
    order: list[str] = []

    async def call(user: str, seconds: float) -> None:
        await pool.call(cpu_tools.spin.fn, {"seconds": seconds}, user_id=user)
        order.append(user)

    hog = [asyncio.create_task(call("usr_hog", 0.3)) for _ in range(3)]
    await until(lambda: pool._in_use.get("usr_hog") == 1, what="the hog holds its share")
    other = asyncio.create_task(call("usr_other", 0.01))
    await asyncio.wait_for(other, 5)  # a second worker, though the hog has two calls waiting
    assert order[0] == "usr_other"
    await asyncio.gather(*hog)
    assert order.count("usr_hog") == 3


async def test_the_tool_timeout_kills_a_cpu_bomb_and_the_run_goes_on(
    build_runtime: Any,
) -> None:
    registry = builtin_registry()
    cpu_tools.register(registry)
    rt: Runtime = build_runtime(registry=registry)
    async with rt.factory:
        started = time.monotonic()
        outcome, events = await rt.run("30", agent="spinner")
        elapsed = time.monotonic() - started
        completed = next(e for e in events if e.type.value == "tool_completed")
        assert completed.data["ok"] is False
        assert completed.data["error"]["code"] == "tool_timeout"
        assert outcome.content == "spin failed: tool_timeout"
        assert elapsed < 10  # the 2 s tool timeout, not the 30 s the tool asked for
        assert rt.factory.processes.killed == 1


def test_context_parameter_and_local_functions_are_refused_for_cpu_tools() -> None:
    from atoll import tool
    from atoll.runtime.tools.base import ToolContext

    def local(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="module level"):
        tool(local)
    namespace: dict[str, Any] = {"ToolContext": ToolContext}
    exec(  # a module-level function, as a plugin would define it
        "def needs_context(context: ToolContext) -> int:\n    '''x'''\n    return 1",
        namespace,
    )
    with pytest.raises(TypeError, match="ToolContext"):
        tool(namespace["needs_context"])
