"""CPU-bound tools: they run in killable worker processes, never on the event loop.

Real worker processes (forkserver) run the plain-def tools of ``cpu_tools``;
the dispatcher is the real per-run dispatcher, emitting into a real in-memory
event log.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
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


def gone(process: psutil.Process) -> bool:
    """Whether ``process`` has ended (a zombie not yet reaped counts)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_cancelling_a_call_kills_its_process(pool: ToolProcessPool, tmp_path: Path) -> None:
    started = tmp_path / "started"
    call = asyncio.create_task(
        pool.call(cpu_tools.hold.fn, {"started": str(started)}, user_id="usr_a")
    )
    await until(started.exists, within=60, what="the call running in its worker")
    worker = psutil.Process(int(started.read_text()))
    assert worker.pid != os.getpid() and not gone(worker)
    call.cancel()
    done, _ = await asyncio.wait({call}, timeout=60)  # the call holds its core for an hour
    assert done, "cancelling did not end the call"
    assert call.cancelled()
    assert pool.killed == 1 and pool._workers == 0
    await until(lambda: gone(worker), within=30, what="the worker killed")
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


async def test_a_user_cannot_hold_the_pool_while_another_waits(
    pool: ToolProcessPool, tmp_path: Path
) -> None:
    order: list[str] = []
    release = tmp_path / "release"

    async def call(user: str, tool: Any, arguments: dict[str, Any]) -> None:
        await pool.call(tool.fn, arguments, user_id=user)
        order.append(user)

    held = {"started": str(tmp_path / "started"), "until": str(release)}
    hog = [asyncio.create_task(call("usr_hog", cpu_tools.hold, held)) for _ in range(3)]
    await until(lambda: pool._in_use.get("usr_hog") == 1, what="the hog holds its share")
    # A second worker for the other user, though the hog has two calls waiting (and its
    # first holds its worker until the test lets it go).
    await call("usr_other", cpu_tools.spin, {"seconds": 0.01})
    assert order == ["usr_other"]
    release.touch()
    await asyncio.gather(*hog)
    assert order.count("usr_hog") == 3


async def test_the_tool_timeout_kills_a_cpu_bomb_and_the_run_goes_on(
    build_runtime: Any,
) -> None:
    registry = builtin_registry()
    cpu_tools.register(registry)
    rt: Runtime = build_runtime(registry=registry)
    async with rt.factory:
        outcome, events = await rt.run("30", agent="spinner")  # 30 s asked, 2 s allowed
        completed = next(e for e in events if e.type.value == "tool_completed")
        assert completed.data["ok"] is False
        assert completed.data["error"]["code"] == "tool_timeout"
        assert outcome.content == "spin failed: tool_timeout"
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
