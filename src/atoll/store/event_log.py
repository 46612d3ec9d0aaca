"""The run event log in the database, with group commit.

Appends from every run go to one writer task per database, which writes all
that arrived while the previous transaction was committing in a single
transaction, and only then resolves the appenders (who then publish). So
"logged before pushed" holds without one commit per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, select

from atoll.runtime.events import RunEvent
from atoll.store.db import Database
from atoll.store.models import RunEventRow

logger = logging.getLogger(__name__)

_Pending = tuple[RunEvent, asyncio.Future[None]]


class DatabaseRunEventLog:
    """``RunEventLog`` on the database; start it with ``async with``."""

    def __init__(self, db: Database, *, max_batch: int = 1000) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0
        self.events_written = 0

    async def __aenter__(self) -> DatabaseRunEventLog:
        self._writer = asyncio.create_task(self._write_loop(), name="atoll-event-writer")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Write what is queued, then stop the writer."""
        if self._writer is None:
            return
        await self._queue.join()
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None

    async def append(self, event: RunEvent) -> None:
        """Queue ``event`` for the next group commit and wait until it is committed.

        Cancelling the caller does not withdraw the event: it is still written.
        """
        if self._writer is None:
            raise RuntimeError("the event log's writer is not running")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, done))
        await asyncio.shield(done)

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            except Exception as exc:
                logger.exception("writing %d run events failed", len(batch))
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[_Pending]) -> None:
        now = datetime.now(UTC)
        rows = [
            {
                "run_id": event.run_id,
                "seq": event.seq,
                "user_id": event.user_id,
                "type": event.type.value,
                "payload": event.payload,
                "created_at": now,
            }
            for event, _ in batch
        ]
        async with self._db.writing() as connection:
            await connection.execute(insert(RunEventRow), rows)
        self.batches += 1
        self.events_written += len(rows)

    async def read(self, run_id: str, *, user_id: str, after: int = 0) -> list[RunEvent]:
        """The run's events with ``seq > after``, oldest first; none for another user."""
        query = (
            select(RunEventRow.payload)
            .where(
                RunEventRow.run_id == run_id,
                RunEventRow.user_id == user_id,
                RunEventRow.seq > after,
            )
            .order_by(RunEventRow.seq)
        )
        async with self._db.engine.connect() as connection:
            payloads = (await connection.execute(query)).scalars().all()
        return [RunEvent.from_payload(bytes(p), user_id=user_id) for p in payloads]

    async def last_seq(self, run_id: str) -> int:
        """The highest ``seq`` logged for ``run_id`` (0 when none)."""
        query = select(RunEventRow.seq).where(RunEventRow.run_id == run_id)
        async with self._db.engine.connect() as connection:
            seqs = await connection.execute(query.order_by(RunEventRow.seq.desc()).limit(1))
            return seqs.scalar() or 0

    async def prune(self, retention: timedelta) -> int:
        """Delete events older than ``retention``."""
        cutoff = datetime.now(UTC) - retention
        async with self._db.writing() as connection:
            result = await connection.execute(
                delete(RunEventRow).where(RunEventRow.created_at < cutoff)
            )
        return int(getattr(result, "rowcount", 0) or 0)
