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
from collections.abc import Awaitable, Callable, Coroutine
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
