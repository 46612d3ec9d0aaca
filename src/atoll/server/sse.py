"""Server-Sent Events for one run: replay from ``Last-Event-ID``, then live, then end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from atoll.bus.memory import Closing, MemorySubscription, Resync
from atoll.runtime.events import RunEvent
from atoll.server.services import Services

KEEPALIVE_SECONDS = 15.0
RECONNECT = b"retry: 1000\n: the server is shutting down; reconnect with Last-Event-ID\n\n"
"""Sent when the server stops before the run ends: reconnect in 1 s, resume from the last id."""


class RunStreamResponse(StreamingResponse):
    """A streaming answer that gives its stream slot back however it ends.

    The release is in ``__call__``, which runs for every answer sent, rather than in
    the generator, whose ``finally`` never runs if it was never started.
    """

    def __init__(self, content: AsyncIterator[bytes], *, release: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def sse_frame(event: RunEvent) -> bytes:
    """One SSE message: ``id`` is the event's ``seq``."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        event.seq,
        event.type.value.encode(),
        event.payload,
    )


async def run_stream(
    services: Services, *, run_id: str, user_id: str, after: int
) -> AsyncIterator[bytes]:
    """The run's events after ``after``, live until its terminal event."""
    subscription: MemorySubscription = await services.subscribe(user_id)
    try:
        last = after
        for logged in await services.event_log.read(run_id, user_id=user_id, after=after):
            yield sse_frame(logged)
            last = logged.seq
            if logged.ends_run:
                return
        while True:
            try:
                event: RunEvent | Resync | Closing = await asyncio.wait_for(
                    subscription.get(), KEEPALIVE_SECONDS
                )
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if isinstance(event, Closing):
                yield RECONNECT
                return
            if isinstance(event, Resync):  # events may have been missed: catch up from the log
                for item in await services.event_log.read(run_id, user_id=user_id, after=last):
                    yield sse_frame(item)
                    last = item.seq
                    if item.ends_run:
                        return
                continue
            if event.run_id != run_id or event.user_id != user_id or event.seq <= last:
                continue
            missed: list[RunEvent] = []
            if event.seq > last + 1:
                missed = await services.event_log.read(run_id, user_id=user_id, after=last)
            for item in [*(m for m in missed if m.seq < event.seq), event]:
                yield sse_frame(item)
                last = item.seq
                if item.ends_run:
                    return
    finally:
        with contextlib.suppress(Exception):
            await subscription.aclose()
