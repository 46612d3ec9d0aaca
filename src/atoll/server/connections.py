"""WebSocket connections: the per-user registry, and one connection's writer.

Each connection has one reader (the endpoint) and one writer task; everything
sent goes through a bounded queue to the writer, which is the only code that
writes to the socket. The writer checks the owner of every event right before
writing it, keeps each run gapless and duplicate-free, and a client too slow to
drain its queue is disconnected (1008) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketState

from atoll.bus.memory import Resync
from atoll.runtime.events import RunEvent, RunEventLog
from atoll.server.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Resume:
    """Replay ``run_id`` from ``after``, then follow it live."""

    run_id: str
    after: int
    if_unseen: bool = False
    """Only when this connection is not following the run yet (an idempotent resend)."""
    replay: bool = True
    """Read the log now; False only marks the run followed, so a later gap is filled."""


Outgoing = RunEvent | Resume | Resync | dict[str, Any]


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
    ) -> None:
        self.websocket = websocket
        self.user_id = user_id
        self.session_id = session_id
        self.connection_id = connection_id
        self._log = log
        self._metrics = metrics
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue(queue_size)
        self._last_sent: dict[str, int] = {}
        self._ended: set[str] = set()
        self.slow = False

    def send(self, item: Outgoing) -> None:
        """Queue a frame, an event or a resume; marks the client slow when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.slow = True
            raise SlowClientError(self.connection_id) from None

    async def writer(self) -> None:
        """Write queued items to the socket, in order, until cancelled."""
        while True:
            item = await self._queue.get()
            if isinstance(item, RunEvent):
                await self._event(item)
            elif isinstance(item, Resume):
                await self._resume(item)
            elif isinstance(item, Resync):
                await self._resync()
            else:
                await self.websocket.send_text(orjson.dumps(item).decode())

    async def _write_event(self, event: RunEvent) -> None:
        if event.user_id != self.user_id:  # the last line of defence: never another's event
            logger.error(
                "refused to write an event of run %s to another user's socket", event.run_id
            )
            return
        await self.websocket.send_text(event.payload.decode())
        self._last_sent[event.run_id] = event.seq
        if event.ends_run:
            self._ended.add(event.run_id)
        with contextlib.suppress(ValueError):
            stamped = datetime.fromisoformat(event.ts.replace("Z", "+00:00")).timestamp()
            self._metrics.event_delivery.observe(max(0.0, time.time() - stamped))

    async def _event(self, event: RunEvent) -> None:
        last = self._last_sent.get(event.run_id)
        if last is None:
            if event.seq != 1:
                return  # a run that predates this connection: the client resumes it if it wants
            await self._write_event(event)
            return
        if event.seq <= last:
            return
        if event.seq > last + 1:  # a publish was lost: fill the gap from the log
            for missed in await self._log.read(event.run_id, user_id=self.user_id, after=last):
                if missed.seq >= event.seq:
                    break
                await self._write_event(missed)
        await self._write_event(event)

    async def _resume(self, resume: Resume) -> None:
        if resume.if_unseen and resume.run_id in self._last_sent:
            return
        self._last_sent[resume.run_id] = resume.after
        if not resume.replay:
            return
        for event in await self._log.read(resume.run_id, user_id=self.user_id, after=resume.after):
            await self._write_event(event)

    async def _resync(self) -> None:
        """Catch up, from the log, every run this socket follows that has not ended."""
        for run_id, last in list(self._last_sent.items()):
            if run_id not in self._ended:
                for event in await self._log.read(run_id, user_id=self.user_id, after=last):
                    await self._write_event(event)

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

    async def close_session(self, session_id: str, code: int, reason: str) -> None:
        """Close the connections opened with ``session_id`` (logout: 4401)."""
        for connections in list(self._by_user.values()):
            for connection in list(connections):
                if connection.session_id == session_id:
                    await connection.close(code, reason)

    async def close_all(self, code: int, reason: str) -> None:
        """Close every connection (shutdown: 1001, clients reconnect)."""
        for connections in list(self._by_user.values()):
            for connection in list(connections):
                await connection.close(code, reason)
