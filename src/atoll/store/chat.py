"""Threads, messages and runs: every query is scoped to the owner.

A thread, message or run of another user is indistinguishable from a missing
one: both raise ``NotFoundError``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.orm import Session

from atoll.errors import NotFoundError, ValidationFailedError
from atoll.runtime.events import EventType, RunEvent
from atoll.runtime.ids import new_id
from atoll.runtime.state import ALIVE_STATES, ExecutionState
from atoll.store.audit import AuditLog
from atoll.store.bounds import CURSOR_PATTERN
from atoll.store.db import Database
from atoll.store.event_log import event_row
from atoll.store.models import Message, Run, RunEventRow, Thread, User, utcnow
from atoll.store.writer import execute_core, insert_rows

ALIVE = [s.value for s in ALIVE_STATES]
_CURSOR = re.compile(CURSOR_PATTERN)
T = TypeVar("T")


def encode_cursor(pk: int) -> str:
    """The pagination cursor of row ``pk`` (opaque to clients; today the row key)."""
    return str(pk)


def decode_cursor(cursor: str | None) -> int | None:
    """The row key inside a cursor; ``ValidationFailedError`` when it is not one of ours."""
    if cursor is None:
        return None
    if not _CURSOR.fullmatch(cursor):
        raise ValidationFailedError(
            "invalid cursor", [{"loc": ["query", "cursor"], "msg": "not a valid cursor"}]
        )
    return int(cursor)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of rows and the cursor of the next one."""

    items: list[T]
    next_cursor: str | None


def thread_query(user_id: str, thread_id: str) -> Select[Thread]:
    """The user's thread ``thread_id`` (no row for anyone else)."""
    return select(Thread).where(Thread.id == thread_id, Thread.user_id == user_id)


def alive_runs_query(thread_id: str) -> Select[Run]:
    """The thread's runs that are not terminal."""
    return select(Run).where(Run.thread_id == thread_id, Run.state.in_(ALIVE))


HISTORY_LIMIT = 40


def history_query(thread_id: str) -> Select[Message]:
    """The thread's newest ``HISTORY_LIMIT`` messages, newest first."""
    return (
        select(Message)
        .where(Message.thread_id == thread_id)
        .order_by(Message.pk.desc())
        .limit(HISTORY_LIMIT)
    )


def history_in(session: Session, thread_id: str) -> list[Message]:
    """Inside a write job: the thread's newest messages, oldest first."""
    return list(session.execute(history_query(thread_id)).scalars().all())[::-1]


def history_before(session: Session, thread_id: str, before_pk: int) -> list[Message]:
    """Inside a write job: the thread's newest messages before ``before_pk``, oldest first."""
    query = history_query(thread_id).where(Message.pk < before_pk)
    return list(session.execute(query).scalars().all())[::-1]


def thread_in(session: Session, user_id: str, thread_id: str) -> Thread:
    """Inside a write job: the user's thread, or ``NotFoundError``."""
    thread = session.execute(thread_query(user_id, thread_id)).scalar()
    if thread is None:
        raise NotFoundError("thread not found")
    return thread


def new_thread(user_id: str, *, title: str | None, meta: dict[str, Any]) -> Thread:
    """A new thread row (not yet added to a session)."""
    now = utcnow()
    return Thread(
        id=new_id("thr"), user_id=user_id, title=title, meta=meta, created_at=now, updated_at=now
    )


class ChatStore:
    """Owner-scoped access to threads, messages and runs."""

    def __init__(self, db: Database, audit: AuditLog) -> None:
        self.db = db
        self._audit = audit

    async def _not_found(self, model: type[Thread] | type[Run], user_id: str, key: str) -> None:
        """Raise ``NotFoundError``; audit it as denied access when the row is someone else's."""
        async with self.db.session() as session:
            owner = (await session.execute(select(model.user_id).where(model.id == key))).scalar()
        if owner is not None and owner != user_id:
            await self._audit.record("access_denied", user_id=user_id, resource=key)
        raise NotFoundError(f"{model.__tablename__[:-1]} not found")

    # -- threads -------------------------------------------------------------

    async def create_thread(
        self, user_id: str, *, title: str | None, meta: dict[str, Any]
    ) -> Thread:
        """Create an empty thread."""
        thread = new_thread(user_id, title=title, meta=meta)

        def create(session: Session) -> Thread:
            insert_rows(session, thread)
            return thread

        return await self.db.write(create)

    async def thread(self, user_id: str, thread_id: str) -> Thread:
        """The user's thread ``thread_id``; ``NotFoundError`` otherwise."""
        async with self.db.session() as session:
            thread = (await session.execute(thread_query(user_id, thread_id))).scalar()
        if thread is None:
            await self._not_found(Thread, user_id, thread_id)
        assert thread is not None
        return thread

    async def update_thread(
        self,
        user_id: str,
        thread_id: str,
        *,
        title: str | None,
        set_title: bool,
        meta: dict[str, Any] | None,
    ) -> Thread:
        """Rename a thread and/or replace its metadata."""

        def update_job(session: Session) -> Thread:
            thread = thread_in(session, user_id, thread_id)
            if set_title:
                thread.title = title
            if meta is not None:
                thread.meta = meta
            thread.updated_at = utcnow()
            return thread

        return await self.db.write(update_job)

    async def list_threads(self, user_id: str, *, limit: int, cursor: str | None) -> Page[Thread]:
        """The user's threads, newest first."""
        before = decode_cursor(cursor)
        query = select(Thread).where(Thread.user_id == user_id)
        if before is not None:
            query = query.where(Thread.pk < before)
        query = query.order_by(Thread.pk.desc()).limit(limit + 1)
        async with self.db.session() as session:
            rows = list((await session.execute(query)).scalars().all())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, encode_cursor(rows[-1].pk) if more and rows else None)

    async def alive_run_ids(self, user_id: str, thread_id: str) -> list[str]:
        """Ids of the user's thread's alive runs (``NotFoundError`` for no such thread)."""
        thread = await self.thread(user_id, thread_id)
        async with self.db.session() as session:
            runs = (await session.execute(alive_runs_query(thread.id))).scalars().all()
        return [run.id for run in runs]

    async def delete_thread(self, user_id: str, thread_id: str) -> None:
        """Delete the thread, its messages, runs and events."""

        def delete_job(session: Session) -> None:
            thread = thread_in(session, user_id, thread_id)
            run_ids = list(
                session.execute(select(Run.id).where(Run.thread_id == thread.id)).scalars().all()
            )
            if run_ids:
                session.execute(delete(RunEventRow).where(RunEventRow.run_id.in_(run_ids)))
            session.execute(delete(Run).where(Run.thread_id == thread.id))
            session.execute(delete(Message).where(Message.thread_id == thread.id))
            session.delete(thread)

        await self.db.write(delete_job)

    # -- messages ------------------------------------------------------------

    async def list_messages(
        self, user_id: str, thread_id: str, *, limit: int, cursor: str | None
    ) -> Page[Message]:
        """The thread's messages, oldest first."""
        after = decode_cursor(cursor)
        await self.thread(user_id, thread_id)
        query = select(Message).where(Message.thread_id == thread_id)
        if after is not None:
            query = query.where(Message.pk > after)
        query = query.order_by(Message.pk).limit(limit + 1)
        async with self.db.session() as session:
            rows = list((await session.execute(query)).scalars().all())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, encode_cursor(rows[-1].pk) if more and rows else None)

    async def history(self, thread_id: str, *, before_pk: int) -> list[Message]:
        """The last ``HISTORY_LIMIT`` messages of the thread before ``before_pk``, oldest first."""
        query = history_query(thread_id).where(Message.pk < before_pk)
        async with self.db.session() as session:
            rows = list((await session.execute(query)).scalars().all())
        return rows[::-1]

    async def add_assistant_message(
        self, *, message_id: str, thread_id: str, user_id: str, run_id: str, content: str
    ) -> None:
        """Store an agent's answer."""
        now = utcnow()
        message = Message(
            id=message_id,
            thread_id=thread_id,
            user_id=user_id,
            role="assistant",
            content=content,
            run_id=run_id,
            created_at=now,
        )

        def add(session: Session) -> None:
            insert_rows(session, message)
            execute_core(
                session, update(Thread).where(Thread.id == thread_id).values(updated_at=now)
            )

        await self.db.write(add)

    # -- runs ----------------------------------------------------------------

    async def run(self, user_id: str, run_id: str) -> Run:
        """The user's run ``run_id``; ``NotFoundError`` otherwise."""
        async with self.db.session() as session:
            query = select(Run).where(Run.id == run_id, Run.user_id == user_id)
            run = (await session.execute(query)).scalar()
        if run is None:
            await self._not_found(Run, user_id, run_id)
        assert run is not None
        return run

    async def alive_runs(
        self, *, claimed: bool | None = None, queued_before: datetime | None = None
    ) -> Sequence[Run]:
        """Every run not terminal (after a crash: runs that will never finish).

        Only claimed (``worker_id`` set) or unclaimed ones if asked, and only those
        (last) queued before ``queued_before``.
        """
        query = select(Run).where(Run.state.in_(ALIVE))
        if claimed is True:
            query = query.where(Run.worker_id.is_not(None))
        elif claimed is False:
            query = query.where(Run.worker_id.is_(None))
        if queued_before is not None:
            query = query.where(func.coalesce(Run.queued_at, Run.created_at) < queued_before)
        async with self.db.session() as session:
            return (await session.execute(query)).scalars().all()

    async def input_message(self, user_id: str, run_id: str) -> Message | None:
        """The user's message that started run ``run_id`` (None if no such run of theirs)."""
        query = select(Message).where(
            Message.run_id == run_id, Message.user_id == user_id, Message.role == "user"
        )
        async with self.db.session() as session:
            return (await session.execute(query.limit(1))).scalar()

    async def stalled_runs(self, *, queued_before: datetime) -> list[Claim]:
        """PENDING runs (last) queued before ``queued_before``, ready to start.

        Each comes with its message, its user's plan and roles and the thread's
        history before it (single process: nothing but this process runs them).
        """
        query = (
            select(Run, Message, User.plan, User.roles)
            .join(Message, Message.id == Run.input_message_id)
            .join(User, User.id == Run.user_id)
            .where(
                Run.state == ExecutionState.PENDING.value,
                func.coalesce(Run.queued_at, Run.created_at) < queued_before,
            )
            .order_by(Run.pk)
        )
        async with self.db.session() as session:
            rows = (await session.execute(query)).all()
            stalled = []
            for run, message, plan, roles in rows:
                history_rows = await session.execute(
                    history_query(run.thread_id).where(Message.pk < message.pk)
                )
                history = list(history_rows.scalars().all())[::-1]
                stalled.append(Claim(run, message, plan, frozenset(roles or ()), False, history))
        return stalled

    async def find_run(self, run_id: str) -> Run | None:
        """Run ``run_id`` whoever owns it (for the cluster's own bookkeeping, never a request)."""
        async with self.db.session() as session:
            return (await session.execute(select(Run).where(Run.id == run_id))).scalar()

    async def alive_runs_of(self, user_id: str, run_ids: list[str]) -> Sequence[Run]:
        """Those of the user's runs ``run_ids`` that are still alive."""
        query = select(Run).where(Run.user_id == user_id, Run.id.in_(run_ids), Run.state.in_(ALIVE))
        async with self.db.session() as session:
            return (await session.execute(query)).scalars().all()

    async def finish_run(
        self,
        run_id: str,
        *,
        state: str,
        error: dict[str, Any] | None,
        started_at: datetime | None,
        finished_at: datetime,
        answer_message_id: str | None,
        worker_id: str | None = None,
    ) -> None:
        """Record a run's terminal state (a worker's only while it still holds the run)."""
        condition = Run.id == run_id
        if worker_id is not None:
            condition = condition & (Run.worker_id == worker_id) & Run.state.in_(ALIVE)
        statement = (
            update(Run)
            .where(condition)
            .values(
                state=state,
                error=error,
                started_at=started_at,
                finished_at=finished_at,
                answer_message_id=answer_message_id,
            )
        )
        await self.db.write(lambda session: execute_core(session, statement))

    # -- runs outside an engine (queue, sweeper, recovery) ----------------------

    async def claim_run(self, run_id: str, worker_id: str) -> Claim | None:
        """Take a queued run for ``worker_id`` (PENDING -> STARTING); None if not queued."""

        def claim(session: Session) -> Claim | None:
            claimed = (
                update(Run)
                .where(Run.id == run_id, Run.state == ExecutionState.PENDING.value)
                .values(
                    state=ExecutionState.STARTING.value,
                    worker_id=worker_id,
                    attempts=Run.attempts + 1,
                )
                .returning(Run)
            )
            run = session.execute(claimed).scalar()
            if run is None:
                return None
            earlier = alive_runs_query(run.thread_id).where(Run.pk < run.pk).exists()
            query = (
                select(Message, User.plan, User.roles, earlier)
                .join(User, User.id == Message.user_id)
                .where(Message.id == run.input_message_id)
            )
            message, plan, roles, waits = session.execute(query).one()
            history = [] if waits else history_before(session, run.thread_id, message.pk)
            return Claim(run, message, plan, frozenset(roles or ()), bool(waits), history)

        return await self.db.write(claim)

    async def mark_running(self, run_id: str, worker_id: str, started_at: datetime) -> None:
        """Record that a worker's run has begun (STARTING -> RUNNING, with its start time)."""
        statement = (
            update(Run)
            .where(
                Run.id == run_id,
                Run.worker_id == worker_id,
                Run.state == ExecutionState.STARTING.value,
            )
            .values(state=ExecutionState.RUNNING.value, started_at=started_at)
        )
        await self.db.write(lambda session: execute_core(session, statement))

    async def requeue_run(
        self, run_id: str, worker_id: str, *, max_attempts: int | None = None
    ) -> bool:
        """Give a run held by ``worker_id`` back to the queue (-> PENDING), if it has not begun.

        Only a run without any logged event qualifies (running it again cannot
        repeat anything), and with ``max_attempts`` only one claimed at most that
        often. False when it does not qualify (or another process was first).
        """
        begun = select(RunEventRow.seq).where(RunEventRow.run_id == run_id).exists()
        conditions = [Run.id == run_id, Run.worker_id == worker_id, Run.state.in_(ALIVE), ~begun]
        if max_attempts is not None:
            conditions.append(Run.attempts <= max_attempts)
        statement = (
            update(Run)
            .where(*conditions)
            .values(state=ExecutionState.PENDING.value, worker_id=None, queued_at=utcnow())
        )
        return await self.db.write(
            lambda session: bool(_rowcount(session.connection().execute(statement)))
        )

    async def earlier_alive_run(self, run: Run) -> bool:
        """Whether the run's thread has an alive run created before it."""
        query = alive_runs_query(run.thread_id).where(Run.pk < run.pk).limit(1)
        async with self.db.session() as session:
            return (await session.execute(query)).scalar() is not None

    async def end_run(
        self,
        run_id: str,
        ending: Ending,
        *,
        held_by: str | None = None,
        queued_only: bool = False,
    ) -> RunEvent | None:
        """End a run that no engine is executing, with its terminal event, in one transaction.

        Only an alive run is ended (only a queued one with ``queued_only``; only one
        held by worker ``held_by`` if given), so of several processes trying, one
        wins. If the run's log already ends with a terminal event (its process died
        before recording the state), the state is taken from that event and nothing
        is appended. Returns the appended event, for the caller to publish.
        """

        def end(session: Session) -> RunEvent | None:
            conditions = [Run.id == run_id, Run.state.in_(ALIVE)]
            if queued_only:
                conditions.append(Run.state == ExecutionState.PENDING.value)
            if held_by is not None:
                conditions.append(Run.worker_id == held_by)
            now = utcnow()
            ended = (
                update(Run)
                .where(*conditions)
                .values(state=ending.state.value, error=ending.error, finished_at=now)
            )
            if not _rowcount(session.connection().execute(ended)):
                return None
            run = session.execute(select(Run).where(Run.id == run_id)).scalar_one()
            last_query = (
                select(RunEventRow.seq, RunEventRow.payload)
                .where(RunEventRow.run_id == run_id)
                .order_by(RunEventRow.seq.desc())
                .limit(1)
            )
            last_row = session.execute(last_query).first()
            if last_row is not None:
                last = RunEvent.from_payload(bytes(last_row.payload), user_id=run.user_id)
                if last.ends_run:
                    state, error = terminal_state_of(last)
                    fix = update(Run).where(Run.id == run_id).values(state=state, error=error)
                    session.connection().execute(fix)
                    return None
            event = RunEvent.build(
                type=ending.event_type,
                run_id=run.id,
                thread_id=run.thread_id,
                user_id=run.user_id,
                seq=(last_row.seq if last_row is not None else 0) + 1,
                agent=run.agent,
                parent_agent=None,
                data=ending.data,
            )
            session.connection().execute(insert(RunEventRow), [event_row(event)])
            return event

        return await self.db.write(end)


@dataclass(frozen=True, slots=True)
class Claim:
    """A run a worker claimed, with the user's message that started it."""

    run: Run
    message: Message
    plan: str
    roles: frozenset[str]
    waits: bool
    """Whether an earlier run of the thread is still alive (then ``history`` is empty)."""
    history: list[Message]
    """The thread's messages before this run's, oldest first."""


@dataclass(frozen=True, slots=True)
class Ending:
    """How ``end_run`` ends a run: its state, its terminal event, the recorded error."""

    state: ExecutionState
    event_type: EventType
    data: dict[str, Any]
    error: dict[str, Any] | None

    @classmethod
    def failure(cls, state: ExecutionState, code: str, message: str) -> Ending:
        """An ``agent_error`` ending (failed, timeout or dead)."""
        error = {"code": code, "message": message}
        return cls(state, EventType.AGENT_ERROR, {"state": state.value, **error}, error)

    @classmethod
    def cancelled(cls, reason: str) -> Ending:
        """An ``agent_cancelled`` ending."""
        return cls(ExecutionState.CANCELLED, EventType.AGENT_CANCELLED, {"reason": reason}, None)


def terminal_state_of(event: RunEvent) -> tuple[str, dict[str, Any] | None]:
    """The state and error a run's terminal ``event`` stands for."""
    if event.type is EventType.AGENT_COMPLETED:
        return ExecutionState.COMPLETED.value, None
    if event.type is EventType.AGENT_CANCELLED:
        return ExecutionState.CANCELLED.value, None
    data = dict(event.data)
    return str(data.get("state", ExecutionState.FAILED.value)), data


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
