"""Test helpers: contexts, a runtime bundle, event-sequence checks."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from atoll.bus.memory import InMemoryEventBus, InMemoryRunEventLog
from atoll.runtime.context import UserExecutionContext
from atoll.runtime.engine import RunOutcome, RunRequest
from atoll.runtime.events import RunEvent
from atoll.runtime.factory import ExecutionEngineFactory
from atoll.runtime.ids import new_id


def make_context(**overrides: object) -> UserExecutionContext:
    """A valid context with fresh ids (any field can be overridden)."""
    values: dict[str, object] = {
        "user_id": new_id("usr"),
        "thread_id": new_id("thr"),
        "run_id": new_id("run"),
        "request_id": new_id("req"),
    }
    values.update(overrides)
    return UserExecutionContext(**values)  # type: ignore[arg-type]


@dataclass
class Runtime:
    """A factory plus the log and bus it writes to."""

    factory: ExecutionEngineFactory
    log: InMemoryRunEventLog
    bus: InMemoryEventBus

    async def run(
        self, question: str, *, agent: str = "assistant", user_id: str | None = None
    ) -> tuple[RunOutcome, list[RunEvent]]:
        """Run one question for a (new) user; return the outcome and the run's events."""
        context = make_context(user_id=user_id) if user_id else make_context()
        outcome = await self.factory.run(context, RunRequest(agent, question, new_id("msg")))
        events = await self.log.read(context.run_id, user_id=context.user_id)
        return outcome, events


def types_of(events: list[RunEvent]) -> list[str]:
    """The event types in order."""
    return [e.type.value for e in events]


def is_subsequence(wanted: list[str], actual: list[str]) -> bool:
    """Whether ``wanted`` appears in ``actual`` in order (not necessarily adjacent)."""
    iterator = iter(actual)
    return all(any(item == candidate for candidate in iterator) for item in wanted)


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], within: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` (sync or async) until it holds; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {within:g} s")
        await asyncio.sleep(0.005)
