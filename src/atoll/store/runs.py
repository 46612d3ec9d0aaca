"""The run store: every database step of a run's life, in one place.

``submit`` stores a user's message and its PENDING run in one transaction;
``claim`` takes a queued run for a consumer (PENDING -> STARTING) once no earlier
run of its thread is alive (until then it stays PENDING, held by nobody: the run
before it hands it the turn when it ends — ``finish`` and ``end`` return the
thread's next run, for the caller to dispatch); ``start``
records that it began (-> RUNNING); ``requeue`` hands a run that has not begun
back to the queue; ``finish`` records how a run an engine executed ended, and
``end`` ends a run that nothing executes, with its terminal event, in one
transaction. Every step that races with another process is a conditional
UPDATE, so of several processes trying, exactly one wins.

Reads of runs by their owner (for requests) stay in ``ChatStore``, which makes
another user's run indistinguishable from a missing one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, Update, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import set_committed_value

from atoll.errors import NotFoundError, ThreadBusyError, TooManyWaitingError
from atoll.runtime.endings import Ending
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
    new_thread,
    thread_in,
)
from atoll.store.db import Database
from atoll.store.event_log import event_row, record_move
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


@dataclass(frozen=True, slots=True)
class Submission:
    """One message as a door hands it to ``RunService.submit``: the same value whatever the
    door (a WebSocket frame, REST, the OpenAI-compatible API, AG-UI)."""

    content: str
    thread_id: str | None = None
    agent: str | None = None
    """None: the plan's default agent."""
    multitask: str = "reject"
    metadata: dict[str, Any] | None = None
    client_id: str | None = None
    earlier: Sequence[tuple[str, str]] = ()
    """(role, content) pairs of a conversation begun elsewhere, stored first in a new thread."""
    alias: tuple[str, str] | None = None
    """(source, external id): another protocol's name for the thread (see ``ThreadAlias``)."""


@dataclass(frozen=True, slots=True)
class Submitted:
    """What ``submit`` stored: the thread, the user's message and the run."""

    thread: Thread
    message: Message
    run: Run
    created: bool
    history: list[Message]
    """The thread's messages before this one, when it was stored."""


RunsAtOnce = Callable[[str | None], int]
"""How many runs a user on a plan (by name) executes at once: the plan catalog's rule."""
EXECUTING = [
    ExecutionState.STARTING.value,
    ExecutionState.RUNNING.value,
    ExecutionState.COMPLETING.value,
]


@dataclass(frozen=True, slots=True)
class NextRun:
    """A PENDING run whose turn it is (its thread's oldest alive run, its user with a free
    slot): dispatch it."""

    run_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class Ended:
    """What ``end`` did: the terminal event it appended (None when the run's log already
    ended with one) and the runs whose turn came, now that this one is over."""

    event: RunEvent | None
    next_runs: list[NextRun]


@dataclass(frozen=True, slots=True)
class Claim:
    """A run a consumer claimed, with the user's message that started it."""

    run: Run
    message: Message
    plan: str
    roles: frozenset[str]
    history: list[Message]
    """The thread's messages before this run's, oldest first."""
    org_id: str | None = None
    """The user's organisation (for traces only: the plan already says what it allows)."""


class RunStore:
    """The database steps of runs (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        waiting: int = 20,
        waiting_per_thread: int = 10,
        runs_at_once: RunsAtOnce | None = None,
    ) -> None:
        self.db = db
        self.runs_at_once = runs_at_once
        """With it, a claim also waits for the user's slot: a user executes at most their
        plan's runs at once, the others stay PENDING (held by nothing) until one ends.
        Without it (``ATOLL_RUN_OVERFLOW=reject``), the engine refuses runs over the limit."""
        self.waiting = waiting
        """At most this many of a user's runs waiting beyond those their plan runs at once."""
        self.waiting_per_thread = waiting_per_thread
        """At most this many PENDING runs in one thread."""

    # -- submitting ------------------------------------------------------------------

    async def submit(
        self, user_id: str, submission: Submission, *, agent: str, runs_at_once: int = 1
    ) -> tuple[Submitted, list[str]]:
        """Store the message and a PENDING run of ``agent`` atomically; also the thread's
        alive runs.

        A ``client_id`` the user already sent returns what that message stored
        (``created`` False). With ``multitask="reject"`` a thread with an alive run
        raises ``ThreadBusyError`` and nothing is stored. ``earlier`` (role, content)
        pairs, for a new thread only, are stored in it first: a conversation that
        began elsewhere (the OpenAI-compatible API sends the whole of it).
        ``alias`` (source, external id), with no ``thread_id``: the user's thread of
        that name if there is one (then ``earlier`` is not stored), else the new
        thread gets that name (see ``ThreadAlias``). A user may have ``runs_at_once`` runs
        (their plan's) plus ``waiting`` alive; a thread ``waiting_per_thread`` PENDING.
        """

        content, thread_id, client_id = (
            submission.content,
            submission.thread_id,
            submission.client_id,
        )
        earlier, alias, multitask = submission.earlier, submission.alias, submission.multitask
        metadata = submission.metadata

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
                # The thread's row first (a row lock on PostgreSQL): a run of this thread
                # ending now either sees this run as its successor or is seen ended here.
                now = utcnow()
                touch = update(Thread).where(Thread.id == thread.id, Thread.deleted_at.is_(None))
                if not rows_changed(session, touch.values(updated_at=now)):
                    raise NotFoundError("thread not found")  # its deletion began meanwhile
                set_committed_value(thread, "updated_at", now)  # not dirty: no second UPDATE
                runs = list(session.execute(alive_runs_query(thread.id)).scalars())
                alive = [r.id for r in runs]
                if alive and multitask == "reject":
                    raise ThreadBusyError(
                        "this thread already has a run in progress", details={"run_id": alive[0]}
                    )
                self._check_waiting(session, user_id, runs, runs_at_once)
                history = history_in(session, thread.id)
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
            if known is None:
                thread.updated_at = now
                self._check_waiting(session, user_id, [], runs_at_once)
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

    def _check_waiting(
        self, session: Session, user_id: str, thread_runs: list[Run], runs_at_once: int
    ) -> None:
        """Refuse a run beyond the waiting bounds (``TooManyWaitingError``), before storing it."""
        queued = sum(1 for r in thread_runs if r.state == ExecutionState.PENDING.value)
        if queued >= self.waiting_per_thread:
            raise TooManyWaitingError(
                f"{queued} messages of this thread are already waiting for their turn",
                details={"scope": "thread", "limit": self.waiting_per_thread},
            )
        alive = select(func.count()).where(Run.user_id == user_id, Run.state.in_(ALIVE))
        if session.execute(alive).scalar_one() >= runs_at_once + self.waiting:
            raise TooManyWaitingError(
                f"{self.waiting} of your messages are already waiting to be answered",
                details={"scope": "user", "limit": self.waiting},
            )

    # -- consuming ---------------------------------------------------------------------

    async def claim(self, run_id: str, worker_id: str) -> Claim | None:
        """Take a queued run for ``worker_id`` (PENDING -> STARTING); None if not queued."""

        def claim(session: Session) -> Claim | None:
            owner = select(Run.user_id).where(Run.id == run_id).scalar_subquery()
            limit = self._limit(session, owner)
            statement, values = _claiming(run_id, worker_id, limit)
            run = session.execute(statement.returning(Run), values).scalar()
            if run is None:
                return None
            query = with_org(
                select(Message, effective_plan(), User.roles, Org.id)
                .join(User, User.id == Message.user_id)
                .where(Message.id == run.input_message_id)
            )
            message, plan, roles, org_id = session.execute(query).one()
            history = history_before(session, run.thread_id, message.pk)
            return Claim(run, message, plan, frozenset(roles or ()), history, org_id)

        return await self.db.write(claim)

    async def take(self, run_id: str, worker_id: str, plan: str) -> bool:
        """``claim`` without its reads, for a consumer that has the message (and the user's
        ``plan``) already."""
        limit = self.runs_at_once(plan) if self.runs_at_once is not None else None
        statement, values = _claiming(run_id, worker_id, limit)

        def take(session: Session) -> bool:
            result = session.connection().execute(statement, values)
            return int(getattr(result, "rowcount", 0) or 0) > 0

        return await self.db.write(take)

    def _limit(self, session: Session, user_id: Any) -> int | None:
        """The runs at once of ``user_id`` (a value or a subquery); None: nothing counts."""
        if self.runs_at_once is None:
            return None
        plan = with_org(select(effective_plan()).select_from(User).where(User.id == user_id))
        return self.runs_at_once(session.execute(plan).scalar())

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

    # -- ending ------------------------------------------------------------------------

    async def next_after(self, run_id: str) -> list[NextRun]:
        """The runs whose turn came now that ``run_id`` ended (none while it is alive): its
        engine logged its terminal event, which moved its row (``record_move``)."""

        def after(session: Session) -> list[NextRun]:
            query = select(Run.thread_id, Run.user_id, Run.state).where(Run.id == run_id)
            row = session.execute(query).first()
            if row is None or row.state in ALIVE:
                return []
            return self.next_runs(session, row.thread_id, row.user_id)

        return await self.db.write(after)

    async def end(
        self,
        run_id: str,
        ending: Ending,
        *,
        held_by: str | None = None,
        queued_only: bool = False,
    ) -> Ended | None:
        """End a run that no engine is executing, with its terminal event, in one transaction.

        Only an alive run is ended (only a queued one with ``queued_only``; only one
        held by worker ``held_by`` if given), so of several processes trying, one
        wins; None when this call did not end it. If the run's log already ends with
        a terminal event (its process died before recording the state), the state is
        taken from that event and nothing is appended. Returns the appended event,
        for the caller to publish, and the thread's next run, for it to dispatch.
        """

        def end(session: Session) -> Ended | None:
            ended = _end_run(session, run_id, ending, held_by=held_by, queued_only=queued_only)
            if ended is None:
                return None
            run, event = ended
            return Ended(event, self.next_runs(session, run.thread_id, run.user_id))

        return await self.db.write(end)

    async def close_thread(
        self, user_id: str, thread_id: str, ending: Ending
    ) -> tuple[list[RunEvent], list[str]]:
        """Begin deleting the user's thread, in one transaction: mark it (from now on it is
        missing for every read, and no run can be stored on or claimed from it) and end its
        queued runs with ``ending``. Returns their terminal events, to publish, and the ids
        of its runs still executing, to cancel. ``NotFoundError`` for no such thread."""

        def close(session: Session) -> tuple[list[RunEvent], list[str]]:
            thread = thread_in(session, user_id, thread_id)
            now = utcnow()
            mark = update(Thread).where(Thread.id == thread.id).values(deleted_at=now)
            execute_core(session, mark)
            events, executing = [], []
            for run in session.execute(alive_runs_query(thread.id)).scalars().all():
                if run.state != ExecutionState.PENDING.value:
                    executing.append(run.id)
                    continue
                ended = _end_run(session, run.id, ending, held_by=None, queued_only=True)
                if ended is not None and ended[1] is not None:
                    events.append(ended[1])
            return events, executing

        return await self.db.write(close)

    def next_runs(self, session: Session, thread_id: str, user_id: str) -> list[NextRun]:
        """Inside the transaction that ended a run of ``thread_id``: the runs whose turn came.

        A PENDING run waits for two things: its thread's earlier runs (always) and, with
        ``runs_at_once``, a slot of its user. Both are freed only by a run of that user
        ending, so the ender looks at the user's PENDING runs that lead their thread and
        hands the turn to as many as the user has free slots, oldest first (without slot
        counting: the ended run's thread's next run). They are stamped as queued now: the
        queue timeout counts from their turn, not from when they were sent.
        """
        rows = session.execute(_HEADS, {"key_user": user_id, "most": self.waiting + 1}).all()
        if not rows:
            return []
        if self.runs_at_once is None:
            chosen = [row.id for row in rows if row.thread_id == thread_id][:1]
        else:
            executing = session.execute(_EXECUTING, {"key_user": user_id}).scalar_one()
            free = (self._limit(session, user_id) or 0) - executing
            chosen = [row.id for row in rows[: max(free, 0)]]
        if chosen:
            stamp = update(Run).where(Run.id.in_(chosen)).values(queued_at=utcnow())
            session.connection().execute(stamp)
        return [NextRun(run_id, user_id) for run_id in chosen]

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

    async def claimable(self, *, queued_before: datetime | None = None) -> list[Run]:
        """PENDING runs a claim would take now (their turn in their thread, a free slot of
        their user), (last) queued before ``queued_before``: those nothing took are stalled.
        Runs that wait for their turn are not, however long they wait."""
        query = select(Run).where(Run.state == ExecutionState.PENDING.value, ~_EARLIER_ALIVE)
        if queued_before is not None:
            query = query.where(func.coalesce(Run.queued_at, Run.created_at) < queued_before)

        def read(session: Session) -> list[Run]:
            runs = list(session.execute(query.order_by(Run.pk)).scalars())
            free: dict[str, int] = {}
            for user_id in {run.user_id for run in runs}:
                limit = self._limit(session, user_id)
                executing = session.execute(_EXECUTING, {"key_user": user_id}).scalar_one()
                free[user_id] = len(runs) if limit is None else limit - executing
            chosen = []
            for run in runs:
                if free[run.user_id] > 0:
                    free[run.user_id] -= 1
                    chosen.append(run)
            return chosen

        async with self.db.session() as session:
            return await session.run_sync(read)

    async def alive_of(self, user_id: str, run_ids: list[str]) -> Sequence[Run]:
        """Those of the user's runs ``run_ids`` that are still alive."""
        query = select(Run).where(Run.user_id == user_id, Run.id.in_(run_ids), Run.state.in_(ALIVE))
        async with self.db.session() as session:
            return (await session.execute(query)).scalars().all()

    async def find(self, run_id: str) -> Run | None:
        """Run ``run_id`` whoever owns it (for the cluster's own bookkeeping, never a request)."""
        async with self.db.session() as session:
            return (await session.execute(select(Run).where(Run.id == run_id))).scalar()


def _end_run(
    session: Session, run_id: str, ending: Ending, *, held_by: str | None, queued_only: bool
) -> tuple[Run, RunEvent | None] | None:
    """Inside a write: ``RunStore.end``'s step for one run (see there); the run and the
    terminal event appended (None when its log already ended with one)."""
    run = session.execute(select(Run).where(Run.id == run_id)).scalar()
    if run is None or run.state not in ALIVE:
        return None
    when = []
    if queued_only:
        when.append(Run.state == ExecutionState.PENDING.value)
    if held_by is not None:
        when.append(Run.worker_id == held_by)
    last_query = (
        select(RunEventRow.seq, RunEventRow.payload)
        .where(RunEventRow.run_id == run_id)
        .order_by(RunEventRow.seq.desc())
        .limit(1)
    )
    last_row = session.execute(last_query).first()
    if last_row is not None:
        last = RunEvent.from_payload(bytes(last_row.payload), user_id=run.user_id)
        if last.ends_run:  # logged before its row could be moved (data of an older release)
            return (run, None) if record_move(session, last, when=when) else None
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
    if not record_move(session, event, when=when):
        return None
    session.connection().execute(insert(RunEventRow), [event_row(event)])
    return run, event


# The statements of the hot path are built once: building a correlated subquery on every
# claim cost more CPU than running it (a fifth of the server's time on the Golden Path).
_EARLIER = aliased(Run, name="earlier")
_EARLIER_ALIVE = (
    select(_EARLIER.pk)
    .where(_EARLIER.thread_id == Run.thread_id, _EARLIER.pk < Run.pk, _EARLIER.state.in_(ALIVE))
    .exists()
)
"""Whether an earlier run of the same thread as ``Run`` is alive (correlated)."""
_CLOSING = select(Thread.pk).where(Thread.id == Run.thread_id, Thread.deleted_at.is_not(None))
_BUSY = aliased(Run, name="busy")
_EXECUTING_HERE = (
    select(func.count())
    .select_from(_BUSY)
    .where(_BUSY.user_id == Run.user_id, _BUSY.state.in_(EXECUTING))
    .scalar_subquery()
)
_CLAIM = (
    update(Run)
    .where(
        Run.id == bindparam("key_id"),
        Run.state == ExecutionState.PENDING.value,
        ~_EARLIER_ALIVE,
        ~_CLOSING.exists(),
    )
    .values(
        state=ExecutionState.STARTING.value,
        worker_id=bindparam("new_worker"),
        attempts=Run.attempts + 1,
    )
)
"""A claim: PENDING -> STARTING for a worker, only when no earlier run of its thread is alive
(its answer comes first) and its thread is not being deleted."""
_CLAIM_COUNTED = _CLAIM.where(bindparam("slot_limit") > _EXECUTING_HERE)
"""A claim that also waits for a slot: while its user executes fewer runs than the limit."""
_EXECUTING = select(func.count()).where(
    Run.user_id == bindparam("key_user"), Run.state.in_(EXECUTING)
)
_HEADS = (
    select(Run.id, Run.thread_id)
    .where(
        Run.user_id == bindparam("key_user"),
        Run.state == ExecutionState.PENDING.value,
        ~_EARLIER_ALIVE,
    )
    .order_by(Run.pk)
    .limit(bindparam("most", type_=Integer))
)
"""A user's PENDING runs that lead their thread, oldest first."""


def _claiming(run_id: str, worker_id: str, limit: int | None) -> tuple[Update, dict[str, Any]]:
    """The claim statement and its values (``limit``: with the slot condition)."""
    values: dict[str, Any] = {"key_id": run_id, "new_worker": worker_id}
    if limit is None:
        return _CLAIM, values
    return _CLAIM_COUNTED, {**values, "slot_limit": limit}
