"""Server-Sent Events for one run: replay from ``Last-Event-ID``, then live, then end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from enum import Enum
from functools import partial

import anyio
import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from atoll.auth.principal import Principal
from atoll.bus.memory import Closing, MemorySubscription, Notice, Resync, SessionEnded
from atoll.errors import UnavailableError
from atoll.runtime.events import RunEvent
from atoll.server.follower import RunCursor
from atoll.server.services import Services
from atoll.store.runs import Submitted

SSE_MESSAGE = {
    "type": "object",
    "description": "One Server-Sent Event; `data` is one JSON object (or `[DONE]`)",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
    "required": ["data"],
}
"""The OpenAPI schema of a Server-Sent Event whose data is not one of Atoll's run events."""
KEEPALIVE_SECONDS = 15.0
RECONNECT = b"retry: 1000\n: the server is shutting down; reconnect with Last-Event-ID\n\n"
"""Sent when the server stops before the run ends: reconnect in 1 s, resume from the last id."""
SESSION_ENDED_DETAIL = "this session has ended; log in again"


class RunStreamResponse(StreamingResponse):
    """A streaming answer that gives its stream slot back however it ends.

    The release is in ``__call__``, which runs for every answer sent, rather than in
    the generator, whose ``finally`` never runs if it was never started; so is
    ``after``, awaited (shielded) once the answer is over, however it ended.
    """

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        release: Callable[[], None],
        headers: dict[str, str] | None = None,
        after: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        )
        self._release = release
        self._after = after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
            # Also when the client went away (the body's task was cancelled then): the
            # body is closed now (its subscription with it), not whenever it is collected.
            with anyio.CancelScope(shield=True):
                close = getattr(self.body_iterator, "aclose", None)
                if close is not None:
                    await close()
                if self._after is not None:
                    await self._after()


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


class Tick(Enum):
    """What ``follow_run`` yields besides events."""

    KEEPALIVE = "keepalive"
    """Nothing happened for ``KEEPALIVE_SECONDS``: say something, so proxies keep the line."""
    CLOSING = "closing"
    """The server is shutting down before the run ended; the stream ends after this."""
    SESSION_ENDED = "session_ended"
    """The session (or key) the stream was opened with ended; the stream ends after this."""


async def follow_run(
    services: Services,
    *,
    run_id: str,
    principal: Principal,
    after: int,
    subscription: MemorySubscription | None = None,
) -> AsyncGenerator[list[RunEvent] | Tick]:
    """The run's events after ``after`` in ``seq`` order, without gaps or repeats, in
    batches (what arrived together), live until its terminal event — or until
    ``principal``'s session ends (``Tick.SESSION_ENDED``).

    A ``subscription`` made before the run was stored has seen every event of it, so
    the log is not read first (it still fills any gap). The subscription is closed
    however the iteration ends. Every adapter of a run to a wire format (SSE, the
    OpenAI-compatible API, AG-UI) reads a run through this.
    """
    replay = subscription is None
    if subscription is None:
        subscription = await services.subscribe(principal)
    cursor = RunCursor(services.event_log, run_id=run_id, user_id=principal.user_id, after=after)
    try:
        if replay:
            logged = await cursor.catch_up()
            if logged:
                yield logged
            if cursor.ended:
                return
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_SECONDS):  # no task per wait (wait_for)
                    first = await subscription.get()
            except TimeoutError:
                yield Tick.KEEPALIVE
                continue
            # Everything queued meanwhile goes out together: one write, not one each.
            batch: list[RunEvent] = []
            for event in [first, *subscription.drain()]:
                if isinstance(event, Closing | SessionEnded):
                    if batch:
                        yield batch
                    yield Tick.CLOSING if isinstance(event, Closing) else Tick.SESSION_ENDED
                    return
                if isinstance(event, Notice):
                    continue  # a thread or message change: the WebSocket's business
                if isinstance(event, Resync):  # events may have been missed: from the log
                    batch += await cursor.catch_up()
                else:
                    batch += await cursor.take(event)
                if cursor.ended:
                    yield batch
                    return
            if batch:
                yield batch
    finally:
        with contextlib.suppress(Exception):
            await subscription.aclose()


async def run_stream(
    services: Services,
    *,
    run_id: str,
    principal: Principal,
    after: int,
    subscription: MemorySubscription | None = None,
    preface: bytes = b"",
) -> AsyncIterator[bytes]:
    """The run's events after ``after`` as Server-Sent Events (``preface`` first)."""
    if preface:
        yield preface
    events = follow_run(
        services, run_id=run_id, principal=principal, after=after, subscription=subscription
    )
    async with contextlib.aclosing(events):
        try:
            async for item in events:
                if item is Tick.KEEPALIVE:
                    yield b": keep-alive\n\n"
                elif item is Tick.CLOSING:
                    yield RECONNECT
                elif item is Tick.SESSION_ENDED:
                    yield session_ended_frame()
                else:
                    yield b"".join(sse_frame(event) for event in item)
        except UnavailableError:  # the log could not be read: the client comes back later
            yield RECONNECT


def session_ended_frame() -> bytes:
    """The last message of an SSE stream whose session ended: an ``error`` event shaped
    like the socket's error frame, with no ``retry`` (reconnecting needs a new sign-in)."""
    frame = {"type": "error", "code": "session_revoked", "detail": SESSION_ENDED_DETAIL}
    return sse_preface("error", orjson.dumps(frame))


async def watched_submit(
    services: Services, principal: Principal, submit: Callable[[], Awaitable[Submitted]]
) -> tuple[Submitted, MemorySubscription]:
    """Take one of the user's stream slots and subscribe to their events, *then* submit:
    a refused stream stores nothing, and no event of the run can be missed.

    On success the caller owns the slot (``services.streams.release``) and the
    subscription (``follow_run`` closes it); on failure both are given back here.
    """
    services.streams.acquire(principal.user_id)
    try:
        subscription = await services.subscribe(principal)
        try:
            return await submit(), subscription
        except BaseException:
            await subscription.aclose()
            raise
    except BaseException:
        services.streams.release(principal.user_id)
        raise


class Progress:
    """Whether a stream that cannot be resumed (OpenAI's, AG-UI's) saw its run end; if
    not, its client went away and nobody will read the rest: ``abandon`` cancels the run
    (reason ``client_closed``). Pass ``abandon`` as ``RunStreamResponse(after=…)``."""

    def __init__(self) -> None:
        self.ended = False

    async def abandon(self, services: Services, principal: Principal, run_id: str) -> None:
        """Cancel the run if the stream ended before it did."""
        if not self.ended:
            await services.runs.cancel(principal, run_id, reason="client_closed")


THREAD_HEADER = "Atoll-Thread-Id"
RUN_HEADER = "Atoll-Run-Id"


def run_headers(submitted: Submitted) -> dict[str, str]:
    """The headers that name what a call made, for protocols without Atoll's ack."""
    return {THREAD_HEADER: submitted.thread.id, RUN_HEADER: submitted.run.id}


async def follow_submission(
    services: Services, principal: Principal, submit: Callable[[], Awaitable[Submitted]]
) -> tuple[Submitted, AsyncGenerator[list[RunEvent] | Tick]]:
    """``watched_submit``, then ``follow_run`` of the run it stored (the caller releases
    the stream slot; closing the generator closes the subscription)."""
    submitted, subscription = await watched_submit(services, principal, submit)
    events = follow_run(
        services, run_id=submitted.run.id, principal=principal, after=0,
        subscription=subscription,
    )  # fmt: skip
    return submitted, events


def unresumable_response(
    services: Services,
    principal: Principal,
    submitted: Submitted,
    body: Callable[[Progress], AsyncIterator[bytes]],
) -> RunStreamResponse:
    """A stream of a submitted run that cannot be resumed (OpenAI's, AG-UI's): it gives
    the stream slot back, names the thread and run, and cancels the run if its client
    goes away first (``Progress``)."""
    progress = Progress()
    return RunStreamResponse(
        body(progress),
        release=lambda: services.streams.release(principal.user_id),
        headers=run_headers(submitted),
        after=partial(progress.abandon, services, principal, submitted.run.id),
    )
