"""asyncio helpers for the long-running loops of a process (sweeper, heartbeat, relay).

Loops stop by an event checked between steps rather than by cancellation:
redis-py does not reliably give up a Redis call when its task is cancelled
(redis/redis-py#2028, #2579), so a cancelled loop could hang shutdown.
Cancelling is only the fallback of ``settle_task``, and is not waited on for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Literal, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)


async def run_every(
    interval: float, stop: asyncio.Event, step: Callable[[], Awaitable[object]]
) -> None:
    """Call ``step`` every ``interval`` seconds until ``stop`` is set (checked between steps)."""
    while not stop.is_set():
        await step()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def settle_task(task: asyncio.Task[None], grace: float) -> None:
    """Wait up to ``grace`` seconds for a loop told to stop, then cancel it (2 s more at most)."""
    done, _ = await asyncio.wait([task], timeout=grace) if grace > 0 else (set(), set())
    if not done and not task.done():
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2.0)
    if not task.done():
        logger.warning("task %s did not stop; abandoned", task.get_name())
    elif not task.cancelled() and task.exception() is not None:
        logger.error("task %s failed", task.get_name(), exc_info=task.exception())


def resolved_loop(choice: Literal["auto", "asyncio", "uvloop"]) -> Literal["asyncio", "uvloop"]:
    """The event loop ``choice`` stands for: ``auto`` is uvloop when it is installed."""
    if choice == "auto":
        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    return choice


def run_in_loop(main: Coroutine[Any, Any, T], choice: Literal["auto", "asyncio", "uvloop"]) -> T:
    """``asyncio.run(main)`` on the event loop ``choice`` stands for."""
    if resolved_loop(choice) == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)


class CpuMeter:
    """Seconds the steps of the awaitables it meters held the event loop's thread.

    The event loop runs every user's work on one thread, so what a run costs the others
    is the time its task's steps hold that thread: each step — from being resumed to its
    next ``await`` — is timed with ``time.perf_counter``. Waiting costs nothing (it is
    not a step). A step's time is its CPU time unless the OS took the core away meanwhile;
    ``time.thread_time`` would exclude that, but it is a system call on every step (it
    cost ~4 % of a loaded server), where ``perf_counter`` is read without one. Metering
    several awaitables of one run (its task, its delta flusher) adds them up.
    """

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0

    async def meter(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``, adding the CPU of its steps to this meter."""
        return await _Metered(awaitable, self)


class _Metered(Awaitable[T]):
    """Drives an awaitable step by step (as ``await`` would), timing each step."""

    __slots__ = ("_awaitable", "_meter")

    def __init__(self, awaitable: Awaitable[T], meter: CpuMeter) -> None:
        self._awaitable = awaitable
        self._meter = meter

    def __await__(self) -> Generator[Any, Any, T]:
        steps = self._awaitable.__await__()
        clock = time.perf_counter
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            started = clock()
            try:
                yielded = steps.send(sent) if thrown is None else steps.throw(thrown)
            except StopIteration as stop:
                self._meter.seconds += clock() - started
                return stop.value  # type: ignore[no-any-return]
            except BaseException:
                self._meter.seconds += clock() - started
                raise
            self._meter.seconds += clock() - started
            sent, thrown = None, None
            try:
                sent = yield yielded
            except GeneratorExit:
                close = getattr(steps, "close", None)
                if close is not None:
                    close()
                raise
            except BaseException as exc:  # cancellation, thrown in: pass it on
                thrown = exc


async def retry_until(
    step: Callable[[], Awaitable[T]],
    *,
    within: float,
    what: str,
    first_pause: float = 0.1,
    longest_pause: float = 5.0,
) -> T:
    """Call ``step`` until it returns, pausing (doubling, jittered, at most ``longest_pause``)
    after each failure, for ``within`` seconds at most; then its last error is raised.

    The one retry loop of the code base: each caller says what it retries (``what``, logged
    once on the first failure) and for how long.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    pause = first_pause
    failures = 0
    while True:
        try:
            return await step()
        except Exception as exc:
            failures += 1
            if failures == 1:
                logger.warning("%s failed (%s); retrying for up to %gs", what, exc, within)
            if loop.time() + pause > deadline:
                raise
        await asyncio.sleep(pause * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
        pause = min(pause * 2, longest_pause)
