"""The run event log in the database.

Appends go through the database's one writer, which commits everything that
arrived while its previous transaction was committing in a single transaction
(group commit) and only then resolves the appenders, who then publish. So
"logged before pushed" holds without one commit per event.

The INSERT skips rows whose ``(run_id, seq)`` is already taken and returns the
ones it stored: an event that collides (a run another process has ended) fails
alone with ``EventConflictError``, never the batch it shares.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from atoll.errors import EventConflictError
from atoll.runtime.events import RunEvent
from atoll.store.db import Database
from atoll.store.models import RunEventRow

PRUNE_CHUNK = 2_000
"""Events one pruning job deletes at most."""


def event_row(event: RunEvent) -> dict[str, object]:
    """The ``run_events`` row of ``event``."""
    return {
        "run_id": event.run_id,
        "seq": event.seq,
        "user_id": event.user_id,
        "type": event.type.value,
        "payload": event.payload,
        "created_at": datetime.now(UTC),
    }


def _key(row: dict[str, object]) -> tuple[str, int]:
    return str(row["run_id"]), int(str(row["seq"]))


class DatabaseRunEventLog:
    """``RunEventLog`` on the database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: list[dict[str, object]] = []
        self._flush: asyncio.Future[set[tuple[str, int]]] | None = None
        self._sqlite = db.engine.dialect.name == "sqlite"
        self._fenced: set[str] = set()
        """Runs another process ended (seen as a conflict): no more events for them."""

    def _store(self, session: Session, rows: list[dict[str, object]]) -> set[tuple[str, int]]:
        """Insert ``rows`` and return the keys stored; a run's events stop at its first conflict.

        A conflict means another process ended the run (its terminal event took the
        ``seq``): the run is *fenced* in this log for good, and whatever this batch
        stored for it after the conflicting ``seq`` is withdrawn in the same
        transaction, so nothing of it can follow the run's end.
        """
        if self._fenced:
            rows = [row for row in rows if row["run_id"] not in self._fenced]
        if not rows:
            return set()
        stored = self._insert(session, rows)
        if len(stored) == len(rows):
            return stored  # no conflict: the hot path
        first_conflict: dict[str, int] = {}
        for row in rows:
            key = _key(row)
            if key not in stored:
                first_conflict[key[0]] = min(key[1], first_conflict.get(key[0], key[1]))
        for run_id, seq in first_conflict.items():
            self._fenced.add(run_id)
            late = [key for key in stored if key[0] == run_id and key[1] > seq]
            for key in late:
                session.execute(
                    delete(RunEventRow).where(
                        RunEventRow.run_id == key[0], RunEventRow.seq == key[1]
                    )
                )
                stored.discard(key)
        return stored

    def _insert(self, session: Session, rows: list[dict[str, object]]) -> set[tuple[str, int]]:
        """Insert ``rows``, skipping taken ``(run_id, seq)``; the keys actually stored."""
        if not self._sqlite:  # PostgreSQL: one multi-row INSERT … RETURNING
            returning = (
                pg_insert(RunEventRow)
                .on_conflict_do_nothing(index_elements=["run_id", "seq"])
                .returning(RunEventRow.run_id, RunEventRow.seq)
            )
            return {(run_id, seq) for run_id, seq in session.execute(returning, rows).all()}
        # SQLite: executemany (fast) and its exact row count; look closer only on a conflict.
        statement = sqlite_insert(RunEventRow).on_conflict_do_nothing()
        result = session.connection().execute(statement, rows)
        if int(getattr(result, "rowcount", -1)) == len(rows):
            return {_key(row) for row in rows}
        stored = set()
        for row in rows:
            query = select(RunEventRow.payload).where(
                RunEventRow.run_id == row["run_id"], RunEventRow.seq == row["seq"]
            )
            if bytes(session.execute(query).scalar_one()) == row["payload"]:
                stored.add(_key(row))
        return stored

    async def append(self, event: RunEvent) -> None:
        """Store ``event`` in the next group commit; returns once it is committed.

        Events appended while a write is waiting share one job and one INSERT.
        Cancelling the caller does not withdraw the event: it is still written.
        """
        self._pending.append(event_row(event))
        flush = self._flush
        if flush is None:
            sealed: list[list[dict[str, object]]] = []

            def seal() -> None:  # on the event loop, just before the writer takes the job
                sealed.append(self._pending)
                self._pending = []
                self._flush = None

            def insert_rows(session: Session) -> set[tuple[str, int]]:
                return self._store(session, sealed[0])

            flush = self._flush = asyncio.ensure_future(self._db.write(insert_rows, prepare=seal))
        stored = await asyncio.shield(flush)
        if (event.run_id, event.seq) not in stored:
            raise EventConflictError(
                f"run {event.run_id} already has an event {event.seq}: it was ended elsewhere"
            )

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

    async def prune(self, retention: timedelta, *, chunk: int = PRUNE_CHUNK) -> int:
        """Delete events older than ``retention``, ``chunk`` rows per write job.

        Each chunk is its own job, so a large backlog never holds the one writer for
        long: the hot path's batches run between the chunks.
        """
        cutoff = datetime.now(UTC) - retention
        oldest = (
            select(RunEventRow.run_id, RunEventRow.seq)
            .where(RunEventRow.created_at < cutoff)
            .limit(chunk)
        )
        statement = delete(RunEventRow).where(
            tuple_(RunEventRow.run_id, RunEventRow.seq).in_(oldest)
        )

        def prune(session: Session) -> int:
            result = session.execute(statement)
            return int(getattr(result, "rowcount", 0) or 0)

        removed = 0
        while True:
            deleted = await self._db.write(prune)
            removed += deleted
            if deleted < chunk:
                return removed
