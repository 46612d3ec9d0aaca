"""The run store: every database step of a run's life, in one place.

``submit`` stores a user's message and its PENDING run in one transaction;
``claim`` takes a queued run for a consumer (PENDING -> STARTING); ``start``
records that it began (-> RUNNING); ``requeue`` hands a run that has not begun
back to the queue; ``finish`` records how a run an engine executed ended, and
``end`` ends a run that nothing executes, with its terminal event, in one
transaction. Every step that races with another process is a conditional
UPDATE, so of several processes trying, exactly one wins.

Reads of runs by their owner (for requests) stay in ``ChatStore``, which makes
another user's run indistinguishable from a missing one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Update, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from atoll.errors import ThreadBusyError
from atoll.runtime.endings import Ending, terminal_state_of
from atoll.runtime.events import RunEvent
from atoll.runtime.ids import new_id
from atoll.runtime.state import ExecutionState
from atoll.store.audit import audit_entry
from atoll.store.chat import (
    ALIVE,
    HISTORY_LIMIT,
    alias_query,
    alive_runs_query,
    history_before,
    history_in,
    history_query,
    new_thread,
    thread_in,
)
from atoll.store.db import Database
from atoll.store.event_log import event_row
from atoll.store.models import (
    Message,
    Org,
    Run,
    RunEventRow,
    Thread,
    ThreadAlias,
    User,
    utcnow,
)
from atoll.store.orgs import effective_plan, with_org
from atoll.store.writer import execute_core, insert_rows, rows_changed

_RUNS = Run.__table__
_FINISHED = (
    update(Run)
    .where(Run.id == bindparam("key_id"))
    .values(
        state=bindparam("new_state"),
        error=bindparam("new_error", type_=JSON(none_as_null=True)),  # None: SQL NULL
        started_at=bindparam("new_started_at", type_=_RUNS.c.started_at.type),
        finished_at=bindparam("new_finished_at", type_=_RUNS.c.finished_at.type),
        answer_message_id=bindparam("new_answer"),
    )
)
"""``finish``: built once (the statement a run ends with costs nothing to prepare)."""
_FINISHED_HELD = _FINISHED.where(Run.worker_id == bindparam("key_worker"), Run.state.in_(ALIVE))


@dataclass(frozen=True, slots=True)
class Submitted:
    """What ``submit`` stored: the thread, the user's message and the run."""

    thread: Thread
    message: Message
    run: Run
    created: bool
    history: list[Message]
    """The thread's messages before this one, when it was stored."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A run a consumer claimed, with the user's message that started it."""

    run: Run
    message: Message
    plan: str
    roles: frozenset[str]
    waits: bool
    """Whether an earlier run of the thread is still alive (then ``history`` is empty)."""
    history: list[Message]
    """The thread's messages before this run's, oldest first."""
    org_id: str | None = None
    """The user's organisation (for traces only: the plan already says what it allows)."""


class RunStore:
    """The database steps of runs (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- submitting ------------------------------------------------------------------

    async def submit(
        self,
        user_id: str,
        *,
        content: str,
        thread_id: str | None,
        agent: str,
        multitask: str,
        metadata: dict[str, Any] | None,
        client_id: str | None,
        earlier: Sequence[tuple[str, str]] = (),
        alias: tuple[str, str] | None = None,
    ) -> tuple[Submitted, list[str]]:
        """Store the message and a PENDING run atomically; also the thread's alive runs.

        A ``client_id`` the user already sent returns what that message stored
        (``created`` False). With ``multitask="reject"`` a thread with an alive run
        raises ``ThreadBusyError`` and nothing is stored. ``earlier`` (role, content)
        pairs, for a new thread only, are stored in it first: a conversation that
        began elsewhere (the OpenAI-compatible API sends the whole of it).
        ``alias`` (source, external id), with no ``thread_id``: the user's thread of
        that name if there is one (then ``earlier`` is not stored), else the new
        thread gets that name (see ``ThreadAlias``).
        """

        def store(session: Session) -> tuple[Submitted, list[str]]:
            if client_id is not None:
                query = select(Message).where(
                    Message.user_id == user_id, Message.client_id == client_id
                )
                existing = session.execute(query).scalar()
                if existing is not None and existing.run_id is not None:
                    thread = thread_in(session, user_id, existing.thread_id)
                    run = session.execute(select(Run).where(Run.id == existing.run_id)).scalar_one()
                    return Submitted(thread, existing, run, created=False, history=[]), []
            known = thread_id
            if known is None and alias is not None:
                known = session.execute(alias_query(user_id, *alias)).scalar()
            if known is None:
                first = next((text for role, text in earlier if role == "user"), content)
                thread = new_thread(user_id, title=first[:80], meta={})
                insert_rows(session, thread)
                alive: list[str] = []
                history: list[Message] = [
                    Message(
                        id=new_id("msg"),
                        thread_id=thread.id,
                        user_id=user_id,
                        role=role,
                        content=text,
                        created_at=utcnow(),
                    )
                    for role, text in earlier
                ]
                insert_rows(session, *history)
                history = history[-HISTORY_LIMIT:]  # what the agent sees, as history_in reads
                if alias is not None:
                    name = ThreadAlias(
                        user_id=user_id,
                        source=alias[0],
                        external_id=alias[1],
                        thread_id=thread.id,
                        created_at=utcnow(),
                    )
                    insert_rows(session, name)
            else:
                thread = thread_in(session, user_id, known)
                alive = [r.id for r in session.execute(alive_runs_query(thread.id)).scalars()]
                history = history_in(session, thread.id)
            if alive and multitask == "reject":
                raise ThreadBusyError(
                    "this thread already has a run in progress", details={"run_id": alive[0]}
                )
            now = utcnow()
            run_id = new_id("run")
            message = Message(
                id=new_id("msg"),
                thread_id=thread.id,
                user_id=user_id,
                role="user",
                content=content,
                run_id=run_id,
                client_id=client_id,
                created_at=now,
            )
            run = Run(
                id=run_id,
                thread_id=thread.id,
                user_id=user_id,
                agent=agent,
                state=ExecutionState.PENDING.value,
                input_message_id=message.id,
                meta=metadata or {},
                created_at=now,
            )
            if known is not None:
                execute_core(
                    session, update(Thread).where(Thread.id == thread.id).values(updated_at=now)
                )
                set_committed_value(thread, "updated_at", now)  # not dirty: no second UPDATE
            else:
                thread.updated_at = now
            audit = audit_entry(
                "run_start", user_id=user_id, run_id=run_id, thread_id=thread.id, agent=agent
            )
            insert_rows(session, message, run, audit)
            return Submitted(thread, message, run, created=True, history=history), alive

        try:
            return await self.db.write(store)
        except IntegrityError as exc:
            if alias is None or "thread_aliases" not in str(exc):
                raise
            # Two first messages of one conversation at once: the other one named it.
            raise ThreadBusyError("this conversation is starting in another request") from None

    # -- consuming ---------------------------------------------------------------------

    async def claim(self, run_id: str, worker_id: str) -> Claim | None:
        """Take a queued run for ``worker_id`` (PENDING -> STARTING); None if not queued."""

        def claim(session: Session) -> Claim | None:
            run = session.execute(_claiming(run_id, worker_id).returning(Run)).scalar()
            if run is None:
                return None
            earlier = alive_runs_query(run.thread_id).where(Run.pk < run.pk).exists()
            query = with_org(
                select(Message, effective_plan(), User.roles, earlier, Org.id)
                .join(User, User.id == Message.user_id)
                .where(Message.id == run.input_message_id)
            )
            message, plan, roles, waits, org_id = session.execute(query).one()
            history = [] if waits else history_before(session, run.thread_id, message.pk)
            held = frozenset(roles or ())
            return Claim(run, message, plan, held, bool(waits), history, org_id)

        return await self.db.write(claim)

    async def take(self, run_id: str, worker_id: str) -> bool:
        """``claim`` without its reads, for a consumer that has the message already."""
        statement = _claiming(run_id, worker_id)
        return await self.db.write(lambda session: bool(rows_changed(session, statement)))

    async def start(self, run_id: str, worker_id: str, started_at: datetime) -> None:
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

    async def requeue(
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
        return await self.db.write(lambda session: bool(rows_changed(session, statement)))

    async def earlier_alive(self, run: Run) -> bool:
        """Whether the run's thread has an alive run created before it."""
        query = alive_runs_query(run.thread_id).where(Run.pk < run.pk).limit(1)
        async with self.db.session() as session:
            return (await session.execute(query)).scalar() is not None

    async def history(self, thread_id: str, *, before_pk: int) -> list[Message]:
        """The thread's newest messages before ``before_pk``, oldest first."""
        query = history_query(thread_id).where(Message.pk < before_pk)
        async with self.db.session() as session:
            rows = list((await session.execute(query)).scalars().all())
        return rows[::-1]

    # -- ending ------------------------------------------------------------------------

    async def finish(
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
        """Record how a run an engine executed ended (a worker's only while it holds it)."""
        values: dict[str, Any] = {
            "key_id": run_id,
            "new_state": state,
            "new_error": error,
            "new_started_at": started_at,
            "new_finished_at": finished_at,
            "new_answer": answer_message_id,
        }
        statement = _FINISHED
        if worker_id is not None:
            statement, values["key_worker"] = _FINISHED_HELD, worker_id
        await self.db.write(lambda session: session.connection().execute(statement, values))

    async def end(
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
            if not rows_changed(session, ended):
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

    # -- finding runs ------------------------------------------------------------------

    async def alive(
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

    async def alive_of(self, user_id: str, run_ids: list[str]) -> Sequence[Run]:
        """Those of the user's runs ``run_ids`` that are still alive."""
        query = select(Run).where(Run.user_id == user_id, Run.id.in_(run_ids), Run.state.in_(ALIVE))
        async with self.db.session() as session:
            return (await session.execute(query)).scalars().all()

    async def stalled(self, *, queued_before: datetime) -> list[Claim]:
        """PENDING runs (last) queued before ``queued_before``, ready to start.

        Each comes with its message, its user's plan and roles and the thread's
        history before it (single process: nothing but this process runs them).
        """
        query = with_org(
            select(Run, Message, effective_plan(), User.roles, Org.id)
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
            for run, message, plan, roles, org_id in rows:
                history_rows = await session.execute(
                    history_query(run.thread_id).where(Message.pk < message.pk)
                )
                history = list(history_rows.scalars().all())[::-1]
                held = frozenset(roles or ())
                stalled.append(Claim(run, message, plan, held, False, history, org_id))
        return stalled

    async def find(self, run_id: str) -> Run | None:
        """Run ``run_id`` whoever owns it (for the cluster's own bookkeeping, never a request)."""
        async with self.db.session() as session:
            return (await session.execute(select(Run).where(Run.id == run_id))).scalar()


def _claiming(run_id: str, worker_id: str) -> Update:
    """The conditional UPDATE of a claim: PENDING -> STARTING for ``worker_id``."""
    return (
        update(Run)
        .where(Run.id == run_id, Run.state == ExecutionState.PENDING.value)
        .values(state=ExecutionState.STARTING.value, worker_id=worker_id, attempts=Run.attempts + 1)
    )
