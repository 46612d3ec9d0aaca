"""WebSocket connections: the per-user registry, one connection's writer; SSE stream slots.

Each connection has one reader (the endpoint) and one writer task; everything
sent goes through a bounded queue to the writer, which is the only code that
writes to the socket. The writer checks the owner of every event right before
writing it, and a client too slow to drain its queue is disconnected (1008)
instead of growing memory.

Delivery keeps one ``RunCursor`` per (socket, run) — the same follower every
stream uses (``server/follower.py``). Live events, resume replays, gap fills and
resyncs all go through it, so a socket never writes an event twice and never
skips one. And a run's ``ack`` always comes first: a run submitted on this socket
is acknowledged before its first event; a run this socket starts to see any other
way — another tab's run, one whose ack was lost with an earlier socket, or a
``resume`` — is acknowledged by the writer itself before its first event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketState

from atoll.bus.memory import Closing, Resync
from atoll.errors import TooManySocketsError, TooManyStreamsError
from atoll.runtime.events import RunEvent, RunEventLog
from atoll.server.follower import RunCursor
from atoll.server.metrics import Metrics

logger = logging.getLogger(__name__)

ENDED_MEMORY = 256
"""How many ended runs a connection remembers, so that a late ``resume`` or resent
message of a run that already ended here replays nothing twice. What a client can
still have in flight about runs that end under it is its unfinished runs (its
concurrent and queued ones), far fewer; each entry costs ~160 bytes, so the bound is
~40 KB per socket once full (it was 1,024: 160 KB per socket, most of a soak's RSS
growth)."""
FOLLOWED_MEMORY = 1024
"""How many unfinished runs a connection follows at most (the oldest is dropped first)."""


@dataclass(frozen=True, slots=True)
class Ack:
    """The ``ack`` of a message: written before any event of its run on this socket."""

    frame: dict[str, Any]
    run_id: str
    catch_up: bool
    """Replay what the run has logged beyond this socket's cursor (a resend's ack)."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Replay ``run_id`` from ``after`` (or this socket's cursor, if further), then follow it."""

    run_id: str
    after: int


Outgoing = RunEvent | Ack | Resume | Resync | Closing | dict[str, Any]
AckLookup = Callable[[str, str], Awaitable[dict[str, Any] | None]]
"""``lookup(user_id, run_id)``: the ack frame of a run (None if there is no such run)."""


class SlowClientError(Exception):
    """The client did not drain its send queue in time."""


class Connection:
    """One authenticated WebSocket of one user."""

    def __init__(
        self,
        websocket: WebSocket,
        *,
        user_id: str,
        session_id: str,
        connection_id: str,
        log: RunEventLog,
        metrics: Metrics,
        queue_size: int,
        ack_lookup: AckLookup,
    ) -> None:
        self.websocket = websocket
        self.user_id = user_id
        self.session_id = session_id
        self.connection_id = connection_id
        self._log = log
        self._metrics = metrics
        self._ack_lookup = ack_lookup
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue(queue_size)
        self._following: dict[str, RunCursor] = {}
        """The runs this socket follows and has not seen end: their cursors."""
        self._ended: OrderedDict[str, int] = OrderedDict()
        """run_id -> seq of its terminal event, for recently ended runs."""
        self.slow = False

    def send(self, item: Outgoing) -> None:
        """Queue a frame, event, ack or resume; ``SlowClientError`` when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.slow = True
            raise SlowClientError(self.connection_id) from None

    def cursor(self, run_id: str) -> int | None:
        """The highest ``seq`` of ``run_id`` written here; None for a run not followed."""
        if run_id in self._ended:
            return self._ended[run_id]
        following = self._following.get(run_id)
        return following.last if following is not None else None

    async def writer(self) -> None:
        """Write queued items to the socket, in order, until cancelled."""
        while True:
            item = await self._queue.get()
            if isinstance(item, RunEvent):
                await self._event(item)
            elif isinstance(item, Ack):
                await self._ack(item)
            elif isinstance(item, Resume):
                await self._replay(item.run_id, item.after)
            elif isinstance(item, Resync):
                await self._resync()
            elif isinstance(item, Closing):
                await self.close(1001, "server shutting down")
            else:
                await self.websocket.send_text(orjson.dumps(item).decode())

    async def _event(self, event: RunEvent) -> None:
        """A live event: through its run's cursor (the run's ack first, if this socket sees
        the run for the first time)."""
        following = self._following.get(event.run_id)
        if following is None:
            if event.run_id in self._ended or event.seq != 1 or event.user_id != self.user_id:
                return  # ended here, or predates this connection: the client resumes it
            if not await self._acknowledge(event.run_id):
                return
            following = self._follow(event.run_id, 0)
        await self._write(following, await following.take(event))

    async def _write(self, following: RunCursor, events: list[RunEvent]) -> None:
        """Write what ``following`` handed out; forget the run once its end is written."""
        for event in events:
            if event.user_id != self.user_id:  # the last line of defence: never another's event
                logger.error(
                    "refused to write an event of run %s to another user's socket", event.run_id
                )
                return
            await self.websocket.send_text(event.payload.decode())
            with contextlib.suppress(ValueError):
                stamped = datetime.fromisoformat(event.ts.replace("Z", "+00:00")).timestamp()
                self._metrics.event_delivery.observe(max(0.0, time.time() - stamped))
        if following.ended:
            self._following.pop(following.run_id, None)
            self._ended[following.run_id] = following.last
            while len(self._ended) > ENDED_MEMORY:
                self._ended.popitem(last=False)

    async def _acknowledge(self, run_id: str) -> bool:
        """Write the ``ack`` of a run this socket starts to see without having sent it (another
        tab's, or a resumed one): a client may drop the events of a run it has no ack for."""
        frame = await self._ack_lookup(self.user_id, run_id)
        if frame is None:
            return False
        await self.websocket.send_text(orjson.dumps(frame).decode())
        return True

    async def _ack(self, ack: Ack) -> None:
        await self.websocket.send_text(orjson.dumps(ack.frame).decode())
        following = self._following.get(ack.run_id)
        if following is None and ack.run_id not in self._ended:
            following = self._follow(ack.run_id, 0)
        if ack.catch_up and following is not None:
            await self._write(following, await following.catch_up())

    async def _replay(self, run_id: str, after: int) -> None:
        """A ``resume``: the run's events after ``after`` (or after what this socket wrote,
        if further), then live; acknowledged first if this socket had not seen the run."""
        if run_id in self._ended:
            return  # written here to its end already
        following = self._following.get(run_id)
        if following is None:
            if not await self._acknowledge(run_id):
                return
            following = self._follow(run_id, after)
        elif after > following.last:
            following.last = after
        await self._write(following, await following.catch_up())

    def _follow(self, run_id: str, after: int) -> RunCursor:
        following = RunCursor(self._log, run_id=run_id, user_id=self.user_id, after=after)
        self._following[run_id] = following
        if len(self._following) > FOLLOWED_MEMORY:  # runs whose end this socket never saw
            del self._following[next(iter(self._following))]
        return following

    async def _resync(self) -> None:
        """Catch up, from the log, every run this socket follows that has not ended."""
        for following in list(self._following.values()):
            await self._write(following, await following.catch_up())

    async def close(self, code: int, reason: str = "") -> None:
        """Close the socket (once) with ``code``."""
        if self.websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.websocket.close(code, reason)


class TooManyConnectionsError(Exception):
    """The user already has the maximum number of connections."""


class ConnectionRegistry:
    """The open connections of this process, per user."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self._metrics = metrics
        self._by_user: dict[str, set[Connection]] = {}

    def add(self, connection: Connection) -> None:
        """Register ``connection``; ``TooManyConnectionsError`` past the per-user limit."""
        connections = self._by_user.setdefault(connection.user_id, set())
        if len(connections) >= self.limit:
            if not connections:
                del self._by_user[connection.user_id]
            raise TooManyConnectionsError(connection.user_id)
        connections.add(connection)
        self._metrics.connections.inc()

    def remove(self, connection: Connection) -> None:
        """Forget ``connection``."""
        connections = self._by_user.get(connection.user_id)
        if connections and connection in connections:
            connections.discard(connection)
            self._metrics.connections.dec()
            if not connections:
                del self._by_user[connection.user_id]

    def count(self, user_id: str | None = None) -> int:
        """Open connections (of one user, or all)."""
        if user_id is not None:
            return len(self._by_user.get(user_id, ()))
        return sum(len(c) for c in self._by_user.values())

    async def close_all(self, code: int, reason: str) -> None:
        """Close every connection (shutdown: 1001, clients reconnect)."""
        for connections in list(self._by_user.values()):
            for connection in list(connections):
                await connection.close(code, reason)


class StreamSlots:
    """Open SSE streams per user, up to a limit (like the WebSocket connection limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, user_id: str) -> None:
        """Count one more stream of ``user_id``; ``TooManyStreamsError`` past the limit."""
        count = self._open.get(user_id, 0)
        if count >= self.limit:
            raise TooManyStreamsError(
                f"you already have {self.limit} open event streams; close one first",
                retry_after=1.0,
            )
        self._open[user_id] = count + 1

    def release(self, user_id: str) -> None:
        """One stream of ``user_id`` closed."""
        count = self._open.get(user_id, 0) - 1
        if count > 0:
            self._open[user_id] = count
        else:
            self._open.pop(user_id, None)

    def count(self, user_id: str) -> int:
        """Open streams of ``user_id``."""
        return self._open.get(user_id, 0)


class SocketsPerAddress:
    """Open WebSockets per client address, and how many of them have not authenticated.

    Counted from before the upgrade is accepted until the socket ends, on every socket
    whoever it turns out to be: signing in costs nothing, so the sockets that have not
    (yet) are held to a tighter limit — a flood of silent sockets holds at most that
    many per address, each for at most the auth timeout. Per node, like the per-user
    connection limit.
    """

    def __init__(self, limit: int, unauthenticated_limit: int) -> None:
        self.limit = limit
        self.unauthenticated_limit = unauthenticated_limit
        self._open: dict[str, int] = {}
        self._unauthenticated: dict[str, int] = {}

    def admit(self, address: str) -> AddressSocket:
        """Count a new socket from ``address``; ``TooManySocketsError`` past either limit."""
        open_here = self._open.get(address, 0)
        waiting = self._unauthenticated.get(address, 0)
        if open_here >= self.limit or waiting >= self.unauthenticated_limit:
            which = "open" if open_here >= self.limit else "unauthenticated"
            limit = self.limit if which == "open" else self.unauthenticated_limit
            raise TooManySocketsError(
                f"this address already has {limit} {which} WebSockets; close one first",
                retry_after=1.0,
            )
        self._open[address] = open_here + 1
        self._unauthenticated[address] = waiting + 1
        return AddressSocket(
            signed_in=partial(self._drop, self._unauthenticated, address),
            ended=partial(self._drop, self._open, address),
        )

    def count(self, address: str) -> tuple[int, int]:
        """Open sockets of ``address``, and how many of them have not authenticated."""
        return self._open.get(address, 0), self._unauthenticated.get(address, 0)

    def _drop(self, counts: dict[str, int], address: str) -> None:
        left = counts.get(address, 0) - 1
        if left > 0:
            counts[address] = left
        else:
            counts.pop(address, None)


class AddressSocket:
    """One admitted socket: ``authenticated()`` once signed in, ``release()`` at its end."""

    def __init__(self, *, signed_in: Callable[[], None], ended: Callable[[], None]) -> None:
        self._signed_in: Callable[[], None] | None = signed_in
        self._ended: Callable[[], None] | None = ended

    def authenticated(self) -> None:
        """The socket has signed in: it no longer counts as unauthenticated (once)."""
        signed_in, self._signed_in = self._signed_in, None
        if signed_in is not None:
            signed_in()

    def release(self) -> None:
        """The socket has ended (once)."""
        self.authenticated()
        ended, self._ended = self._ended, None
        if ended is not None:
            ended()
