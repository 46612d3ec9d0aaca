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

from atoll.bus.memory import InMemoryEventBus, InMemoryRunEventLog
from atoll.runtime.builtins import builtin_registry
from atoll.runtime.events import EventRecorder, RunEmitter
from atoll.runtime.tools.base import Tool, ToolResult
from atoll.runtime.tools.dispatcher import ToolDispatcher
from atoll.runtime.tools.processes import ToolProcessPool

import cpu_tools
from support import Runtime, make_context, until

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool() -> AsyncIterator[ToolProcessPool]:
    pool = ToolProcessPool(2, per_user=1, memory_mb=512)
    yield pool
    await pool.aclose()


async def test_a_plain_def_tool_runs_in_another_process(pool: ToolProcessPool) -> None:
    assert cpu_tools.spin.cpu_bound and builtin_registry().tools["calculator"].cpu_bound
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


async def dispatch(pool: ToolProcessPool, tool: Tool, arguments: dict[str, Any]) -> ToolResult:
    """One call through a real per-run dispatcher, as an agent makes it."""
    context = make_context()
    emitter = RunEmitter(
        EventRecorder(InMemoryRunEventLog(), InMemoryEventBus()),
        user_id=context.user_id,
        run_id=context.run_id,
        thread_id=context.thread_id,
        message_id="msg_x",
    )
    dispatcher = ToolDispatcher(
        context=context,
        tools={tool.name: tool},
        emitter=emitter.for_agent("assistant", None),
        processes=pool,
    )
    return await dispatcher.call(tool.name, arguments)


async def test_the_calculator_runs_in_the_killable_pool(build_runtime: Any) -> None:
    rt: Runtime = build_runtime()
    async with rt.factory:
        assert rt.factory.processes.preload == ("atoll.runtime.tools.calculator",)
        outcome, _ = await rt.run("What is 17*23?")
        assert "391" in outcome.content
        assert len(rt.factory.processes.pids()) == 1  # the worker it ran in, idle again


async def test_a_slow_import_does_not_count_against_the_tool_timeout() -> None:
    import slow_import_tools

    pool = ToolProcessPool(1, preload=["slow_import_tools"])
    try:
        first = await dispatch(pool, slow_import_tools.add_one, {"x": 1})
        # The worker imported for 1.5 s, past the 1 s timeout: the timeout counts from ready.
        assert first.ok, first.error
        assert first.result == 2
        assert first.duration_ms >= slow_import_tools.IMPORT_SECONDS * 1000
    finally:
        await pool.aclose()


async def test_a_killed_worker_is_replaced_at_once_so_the_next_call_is_warm() -> None:
    import slow_import_tools

    pool = ToolProcessPool(1, preload=["slow_import_tools"], warm=1)
    pool.start()
    try:
        await until(lambda: pool.ready == 1, within=30, what="the warm worker")
        first_pid = pool.pids()[0]
        timed_out = await dispatch(pool, slow_import_tools.stall, {"seconds": 30})
        assert timed_out.error is not None and timed_out.error["code"] == "tool_timeout"
        assert pool.killed == 1
        # The replacement starts at once, not when the next call comes.
        await until(lambda: pool.ready == 1, within=30, what="the replacement worker")
        assert pool.pids()[0] != first_pid
        assert (await dispatch(pool, slow_import_tools.add_one, {"x": 41})).result == 42
    finally:
        await pool.aclose()


async def test_a_worker_that_cannot_start_says_why() -> None:
    pool = ToolProcessPool(1, preload=["cpu_tools", "atoll_no_such_plugin"])
    try:
        result = await dispatch(pool, cpu_tools.whose_process, {})
        assert result.error is not None
        assert result.error["code"] == "tool_error"
        assert "could not start" in result.error["message"]
        assert (
            "importing atoll_no_such_plugin failed: ModuleNotFoundError"
            in (result.error["message"])
        )
    finally:
        await pool.aclose()
