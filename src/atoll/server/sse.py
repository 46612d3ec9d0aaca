"""Server-Sent Events for one run: replay from ``Last-Event-ID``, then live, then end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from atoll.bus.memory import Closing, MemorySubscription, Notice, Resync
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


def accepts_event_stream(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for Server-Sent Events rather than JSON.

    Only an explicit ``text/event-stream`` (with a q-value above 0, and not below the
    one of ``application/json``) does; ``*/*`` and absent headers get JSON.
    """
    if not accept:
        return False
    weights: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (item.strip() for item in part.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[media.lower()] = max(weight, weights.get(media.lower(), 0.0))
    stream = weights.get("text/event-stream", 0.0)
    return stream > 0 and stream >= weights.get("application/json", 0.0)


def sse_preface(kind: str, body: bytes) -> bytes:
    """A message that is not a run event (no ``id``), e.g. the ``ack`` of a streamed POST."""
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), body)


async def run_stream(
    services: Services,
    *,
    run_id: str,
    user_id: str,
    after: int,
    subscription: MemorySubscription | None = None,
    preface: bytes = b"",
) -> AsyncIterator[bytes]:
    """The run's events after ``after``, live until its terminal event.

    A ``subscription`` made before the run was stored has seen every event of it, so
    the log is not read first (it still fills any gap); ``preface`` is sent first.
    """
    replay = subscription is None
    if subscription is None:
        subscription = await services.subscribe(user_id)
    try:
        if preface:
            yield preface
        last = after
        logged_events = (
            await services.event_log.read(run_id, user_id=user_id, after=after) if replay else []
        )
        for logged in logged_events:
            yield sse_frame(logged)
            last = logged.seq
            if logged.ends_run:
                return
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_SECONDS):  # no task per wait (wait_for)
                    first = await subscription.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            # Everything queued meanwhile goes out in the same chunk: one write, not one each.
            out = bytearray()
            for event in [first, *subscription.drain()]:
                if isinstance(event, Closing):
                    yield bytes(out + RECONNECT)
                    return
                if isinstance(event, Resync):  # events may have been missed: catch up from the log
                    items = await services.event_log.read(run_id, user_id=user_id, after=last)
                elif isinstance(event, Notice):
                    continue  # a thread or message change: the WebSocket's business
                elif event.run_id != run_id or event.user_id != user_id or event.seq <= last:
                    continue
                elif event.seq > last + 1:  # a gap: fill it from the log
                    missed = await services.event_log.read(run_id, user_id=user_id, after=last)
                    items = [*(m for m in missed if m.seq < event.seq), event]
                else:
                    items = [event]
                for item in items:
                    if item.seq <= last:
                        continue
                    out += sse_frame(item)
                    last = item.seq
                    if item.ends_run:
                        yield bytes(out)
                        return
            if out:
                yield bytes(out)
    finally:
        with contextlib.suppress(Exception):
            await subscription.aclose()
