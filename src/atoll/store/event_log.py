"""The run event log in the database: the one truth of a run.

Appends go through the database's one writer, which commits everything that
arrived while its previous transaction was committing in a single transaction
(group commit) and only then resolves the appenders, who then publish. So
"logged before pushed" holds without one commit per event.

A run's row is derived from its log, in the transaction that stores the event
(``record_move``): its top-level ``agent_started`` moves it ``starting ->
running``, its terminal event moves it from any alive state to the state the event
stands for (with its error, end time and answer). Each move is a conditional UPDATE
checked against the states it may leave, so exactly one terminal event can end a
run: a terminal event whose run was already ended (by a cancel, a sweeper, a
deleted thread) is refused and withdrawn, with everything the batch stored for that
run after it. Whoever ends a run — the engine through this log, or ``RunStore.end``
for a run no engine executes — goes through ``record_move``.

The INSERT skips rows whose ``(run_id, seq)`` is already taken and returns the
ones it stored: an event that collides (a run another process has ended) fails
alone with ``EventConflictError``, never the batch it shares.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, bindparam, delete, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from atoll.errors import EventConflictError
from atoll.runtime.endings import terminal_state_of
from atoll.runtime.events import EventType, RunEvent
from atoll.runtime.state import ExecutionState
from atoll.store.chat import ALIVE
from atoll.store.db import Database
from atoll.store.models import Run, RunEventRow

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


SQLITE_INSERT = (
    "INSERT INTO run_events (run_id, seq, user_id, type, payload, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
"""The hot path's INSERT on SQLite, handed to the driver as it is: compiling the
statement and binding every row through SQLAlchemy cost more than the insert itself."""


_STARTED = (
    update(Run)
    .where(Run.id == bindparam("key_id"), Run.state == ExecutionState.STARTING.value)
    .values(state=ExecutionState.RUNNING.value, started_at=bindparam("new_at"))
)


_ENDED = (
    update(Run)
    .where(Run.id == bindparam("key_id"), Run.state.in_(ALIVE))
    .values(
        state=bindparam("new_state"),
        error=bindparam("new_error", type_=JSON(none_as_null=True)),  # None: SQL NULL
        finished_at=bindparam("new_at", type_=Run.__table__.c.finished_at.type),
        answer_message_id=bindparam("new_answer"),
    )
)


def record_move(session: Session, event: RunEvent, *, when: Sequence[Any] = ()) -> bool | None:
    """Inside a write: move ``event``'s run to what ``event`` says (its start, its end) if
    its state allows (and ``when``, extra conditions of the caller, holds).

    True when the row moved; False when its state refused (the run ended elsewhere); None
    when ``event`` moves nothing (not a top-level start or end) or the run has no row.
    """
    if event.parent_agent is not None:
        return None
    now = datetime.now(UTC)
    if event.type is EventType.AGENT_STARTED:
        result = session.connection().execute(_STARTED, {"key_id": event.run_id, "new_at": now})
    elif event.type.is_terminal:
        state, error = terminal_state_of(event)
        answer = None
        if event.type is EventType.AGENT_COMPLETED:
            answer = (event.data.get("message") or {}).get("id")
        values = {"key_id": event.run_id, "new_state": state, "new_error": error,
                  "new_at": now, "new_answer": answer}  # fmt: skip
        ended = _ENDED.where(*when) if when else _ENDED
        result = session.connection().execute(ended, values)
    else:
        return None
    if int(getattr(result, "rowcount", 0) or 0) == 1:
        return True
    exists = session.execute(select(Run.pk).where(Run.id == event.run_id)).first()
    return False if exists is not None else None


class DatabaseRunEventLog:
    """``RunEventLog`` on the database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: list[RunEvent] = []
        self._flush: asyncio.Future[set[tuple[str, int]]] | None = None
        self._sqlite = db.engine.dialect.name == "sqlite"
        dialect = db.engine.dialect
        created = RunEventRow.__table__.c.created_at.type.dialect_impl(dialect)
        self._stamp: Callable[[datetime], object] = created.bind_processor(dialect) or str
        """How SQLAlchemy stores a ``created_at`` (the raw SQLite insert stores the same)."""
        self._fenced: set[str] = set()
        """Runs another process ended (seen as a conflict): no more events for them."""

    def _store(self, session: Session, events: list[RunEvent]) -> set[tuple[str, int]]:
        """Insert ``events`` and return the keys stored; a run's events stop at its first conflict.

        A conflict means another process ended the run (its terminal event took the
        ``seq``): the run is *fenced* in this log for good, and whatever this batch
        stored for it after the conflicting ``seq`` is withdrawn in the same
        transaction, so nothing of it can follow the run's end.
        """
        if self._fenced:
            events = [event for event in events if event.run_id not in self._fenced]
        if not events:
            return set()
        stored = self._insert(session, events)
        first_conflict: dict[str, int] = {}
        for event in events:
            key = (event.run_id, event.seq)
            if key in stored and record_move(session, event) is False:
                stored.discard(key)  # its run was ended elsewhere: the event is withdrawn
                session.execute(
                    delete(RunEventRow).where(
                        RunEventRow.run_id == event.run_id, RunEventRow.seq == event.seq
                    )
                )
            if key not in stored:
                first = first_conflict.get(event.run_id, event.seq)
                first_conflict[event.run_id] = min(event.seq, first)
        if not first_conflict:
            return stored  # no conflict: the hot path
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

    def _insert(self, session: Session, events: list[RunEvent]) -> set[tuple[str, int]]:
        """Insert ``events``, skipping taken ``(run_id, seq)``; the keys actually stored."""
        if not self._sqlite:  # PostgreSQL: one multi-row INSERT … RETURNING
            returning = (
                pg_insert(RunEventRow)
                .on_conflict_do_nothing(index_elements=["run_id", "seq"])
                .returning(RunEventRow.run_id, RunEventRow.seq)
            )
            mapped = [event_row(event) for event in events]
            return {(run_id, seq) for run_id, seq in session.execute(returning, mapped).all()}
        # SQLite: executemany (fast) and its exact row count; look closer only on a conflict.
        # One created_at for the batch: its rows are committed together.
        created = self._stamp(datetime.now(UTC))
        rows = [(e.run_id, e.seq, e.user_id, e.type.value, e.payload, created) for e in events]
        result = session.connection().exec_driver_sql(SQLITE_INSERT, rows)
        if int(getattr(result, "rowcount", -1)) == len(rows):
            return {(event.run_id, event.seq) for event in events}
        stored = set()
        for event in events:
            query = select(RunEventRow.payload).where(
                RunEventRow.run_id == event.run_id, RunEventRow.seq == event.seq
            )
            if bytes(session.execute(query).scalar_one()) == event.payload:
                stored.add((event.run_id, event.seq))
        return stored

    async def append(self, event: RunEvent) -> None:
        """Store ``event`` in the next group commit; returns once it is committed.

        Events appended while a write is waiting share one job and one INSERT.
        Cancelling the caller does not withdraw the event: it is still written.
        """
        self._pending.append(event)
        flush = self._flush
        if flush is None:
            sealed: list[list[RunEvent]] = []

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
        async with self._db.connect() as connection:
            payloads = (await connection.execute(query)).scalars().all()
        return [RunEvent.from_payload(bytes(p), user_id=user_id) for p in payloads]

    async def read_runs(
        self, run_ids: list[str], *, user_id: str, skip_types: frozenset[str] = frozenset()
    ) -> dict[str, list[bytes]]:
        """The wire bytes of several runs' events, each run's oldest first, in one query;
        events of ``skip_types`` are left out, and so is every run that is not the user's."""
        if not run_ids:
            return {}
        query = select(RunEventRow.run_id, RunEventRow.payload).where(
            RunEventRow.run_id.in_(run_ids), RunEventRow.user_id == user_id
        )
        if skip_types:
            query = query.where(RunEventRow.type.not_in(sorted(skip_types)))
        query = query.order_by(RunEventRow.run_id, RunEventRow.seq)
        found: dict[str, list[bytes]] = {run_id: [] for run_id in run_ids}
        async with self._db.connect() as connection:
            for run_id, payload in await connection.execute(query):
                found[run_id].append(bytes(payload))
        return found

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
