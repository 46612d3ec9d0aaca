"""Accepting messages and executing their runs in this process.

``RunService.submit`` stores the user's message and the PENDING run in one
transaction *before* anything is acknowledged, then hands the run to the
engine factory. The answer is stored by the completion hook before
``agent_completed`` is emitted; the run's final state is written when it ends.
On start, runs that a crash left alive are marked DEAD, with an ``agent_error``
event their users can read.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from atoll.auth.service import Principal
from atoll.errors import AgentNotFoundError, RateLimitedError, ThreadBusyError
from atoll.ratelimit import RateLimiter
from atoll.runtime.context import UserExecutionContext
from atoll.runtime.engine import RunRequest
from atoll.runtime.events import EventType, RunEvent
from atoll.runtime.factory import ExecutionEngineFactory
from atoll.runtime.ids import new_id
from atoll.runtime.llm.base import ChatMessage
from atoll.runtime.state import ExecutionState
from atoll.store.audit import AuditLog, audit_entry
from atoll.store.chat import ChatStore, alive_runs_query, history_in, new_thread, thread_in
from atoll.store.event_log import DatabaseRunEventLog
from atoll.store.models import Message, Run, Thread, utcnow
from atoll.store.writer import execute_core, insert_rows

logger = logging.getLogger(__name__)

DEFAULT_AGENT = "supervisor"


@dataclass(frozen=True, slots=True)
class Submitted:
    """What ``submit`` stored: the thread, the user's message and the run."""

    thread: Thread
    message: Message
    run: Run
    created: bool
    history: list[Message]
    """The thread's messages before this one, when it was stored."""


class RunService:
    """Stores messages, starts and cancels runs, and records how they end."""

    def __init__(
        self,
        *,
        chat: ChatStore,
        factory: ExecutionEngineFactory,
        event_log: DatabaseRunEventLog,
        audit: AuditLog,
        message_limiter: RateLimiter,
        default_agent: str = DEFAULT_AGENT,
    ) -> None:
        self._chat = chat
        self._factory = factory
        self._log = event_log
        self._audit = audit
        self._limiter = message_limiter
        self.default_agent = default_agent
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._thread_tail: dict[str, asyncio.Task[None]] = {}
        self._cancel_requests: dict[str, str] = {}

    # -- submitting --------------------------------------------------------------

    async def submit(
        self,
        principal: Principal,
        *,
        content: str,
        thread_id: str | None,
        agent: str | None,
        multitask: str,
        metadata: dict[str, Any] | None = None,
        client_id: str | None = None,
    ) -> Submitted:
        """Store the message and a PENDING run (atomically), then start the run."""
        agent_name = agent or self.default_agent
        self._factory.registry.agent(agent_name)  # unknown agent: 422 before anything is stored
        # Resends of a client_id count too: the limit is on frames, and this saves a read.
        retry_after = await self._limiter.hit(f"messages:{principal.user_id}")
        if retry_after is not None:
            raise RateLimitedError(
                f"message rate limit reached; retry in {retry_after:.1f}s",
                retry_after=retry_after,
            )

        def store(session: Session) -> tuple[Submitted, list[str]]:
            if client_id is not None:
                query = select(Message).where(
                    Message.user_id == principal.user_id, Message.client_id == client_id
                )
                existing = session.execute(query).scalar()
                if existing is not None and existing.run_id is not None:
                    thread = thread_in(session, principal.user_id, existing.thread_id)
                    run = session.execute(select(Run).where(Run.id == existing.run_id)).scalar_one()
                    return Submitted(thread, existing, run, created=False, history=[]), []
            if thread_id is None:
                thread = new_thread(principal.user_id, title=content[:80], meta={})
                insert_rows(session, thread)
                alive: list[str] = []
                history: list[Message] = []
            else:
                thread = thread_in(session, principal.user_id, thread_id)
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
                user_id=principal.user_id,
                role="user",
                content=content,
                run_id=run_id,
                client_id=client_id,
                created_at=now,
            )
            run = Run(
                id=run_id,
                thread_id=thread.id,
                user_id=principal.user_id,
                agent=agent_name,
                state=ExecutionState.PENDING.value,
                input_message_id=message.id,
                meta=metadata or {},
                created_at=now,
            )
            if thread_id is not None:
                execute_core(
                    session, update(Thread).where(Thread.id == thread.id).values(updated_at=now)
                )
                set_committed_value(thread, "updated_at", now)  # not dirty: no second UPDATE
            else:
                thread.updated_at = now
            audit = audit_entry(
                "run_start",
                user_id=principal.user_id,
                run_id=run_id,
                thread_id=thread.id,
                agent=agent_name,
            )
            insert_rows(session, message, run, audit)
            return Submitted(thread, message, run, created=True, history=history), alive

        submitted, alive = await self._chat.db.write(store)
        if not submitted.created:
            return submitted
        if alive and multitask == "interrupt":
            for previous in alive:
                self.cancel_local(previous, principal.user_id, reason="interrupted")
        self._start(principal, submitted)
        return submitted

    def _start(self, principal: Principal, submitted: Submitted) -> None:
        thread, run = submitted.thread, submitted.run
        previous = self._thread_tail.get(thread.id)
        task = asyncio.create_task(
            self._execute(principal, submitted, previous), name=f"run {run.id}"
        )
        self._tasks[run.id] = task
        self._thread_tail[thread.id] = task
        task.add_done_callback(lambda _: self._forget(run.id, thread.id, task))

    def _forget(self, run_id: str, thread_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(run_id, None)
        self._cancel_requests.pop(run_id, None)
        if self._thread_tail.get(thread_id) is task:
            del self._thread_tail[thread_id]

    async def _execute(
        self, principal: Principal, submitted: Submitted, previous: asyncio.Task[None] | None
    ) -> None:
        thread_id, message, run = submitted.thread.id, submitted.message, submitted.run
        context = UserExecutionContext(
            user_id=principal.user_id,
            thread_id=thread_id,
            run_id=run.id,
            request_id=new_id("req"),
            plan=principal.plan,
            roles=principal.roles,
        )
        try:
            rows = submitted.history
            if (
                previous is not None
            ):  # enqueued: run after the thread's earlier run, with its answer
                await asyncio.wait([previous])
                rows = await self._chat.history(thread_id, before_pk=message.pk)
            history = [
                ChatMessage("user" if m.role == "user" else "assistant", m.content)
                for m in rows
                if m.role in ("user", "assistant")
            ]
            async with self._factory.user_execution_scope(context) as engine:
                reason = self._cancel_requests.pop(run.id, None)
                if reason is not None:
                    engine.cancel(reason)
                request = RunRequest(run.agent, message.content, message.id, history)
                outcome = await engine.run(request)
            record = self._factory.tracker.find(run.id)
            started = record.started_wall if record is not None else None
            await self._chat.finish_run(
                run.id,
                state=outcome.state.value,
                error=dict(outcome.error) if outcome.error else None,
                started_at=started,
                finished_at=datetime.now(UTC),
                answer_message_id=outcome.message_id
                if outcome.state is ExecutionState.COMPLETED
                else None,
            )
        except AgentNotFoundError:
            logger.error("run %s names an agent that is no longer registered", run.id)
        except Exception:
            logger.exception("run %s could not be executed", run.id)

    # -- cancelling ----------------------------------------------------------------

    def cancel_local(self, run_id: str, user_id: str, *, reason: str) -> bool:
        """Cancel a run executing (or about to execute) in this process."""
        if self._factory.cancel(run_id, user_id=user_id, reason=reason):
            return True
        if run_id in self._tasks and self._factory.engine(run_id, user_id=user_id) is None:
            self._cancel_requests[run_id] = reason
            return True
        return False

    async def cancel(self, principal: Principal, run_id: str, *, reason: str = "user") -> Run:
        """Cancel the user's run (idempotent; a finished run is returned as it is)."""
        run = await self._chat.run(principal.user_id, run_id)
        if ExecutionState.parse(run.state).is_alive:
            self.cancel_local(run_id, principal.user_id, reason=reason)
            await self._audit.record("run_cancel", user_id=principal.user_id, run_id=run_id)
        return run

    async def cancel_thread_runs(self, user_id: str, run_ids: list[str]) -> None:
        """Cancel every live run in ``run_ids`` and wait for them to end."""
        tasks = [self._tasks[r] for r in run_ids if r in self._tasks]
        for run_id in run_ids:
            self.cancel_local(run_id, user_id, reason="thread_deleted")
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    # -- state -------------------------------------------------------------------

    def live_state(self, run: Run) -> dict[str, Any]:
        """The run's fields, with the live state when it is executing here."""
        record = self._factory.tracker.find(run.id)
        state, started, finished, error = run.state, run.started_at, run.finished_at, run.error
        if record is not None and ExecutionState.parse(run.state).is_alive:
            state = record.state.value
            started = record.started_wall or started
            if record.state.is_terminal:
                finished = record.transitions[-1][1]
                error = record.error
        return {
            "id": run.id,
            "thread_id": run.thread_id,
            "agent": run.agent,
            "state": state,
            "created_at": run.created_at,
            "started_at": started,
            "finished_at": finished,
            "error": error,
        }

    async def drain(self, grace: float) -> None:
        """Let live runs finish for up to ``grace`` seconds (shutdown)."""
        tasks = list(self._tasks.values())
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)

    async def wait_all(self) -> None:
        """Wait until every run task has recorded its end."""
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks)

    # -- recovery ------------------------------------------------------------------

    async def recover(self) -> int:
        """Mark runs left alive by a crash DEAD and tell their users why."""
        runs = await self._chat.all_alive_runs()
        for run in runs:
            events = await self._log.read(run.id, user_id=run.user_id)
            error: dict[str, Any] | None = {
                "code": "run_dead",
                "message": "the server stopped while this run was in progress",
            }
            state = ExecutionState.DEAD.value
            if events and events[-1].ends_run:
                last = events[-1]  # ended, but its state was not recorded before the crash
                state = {
                    EventType.AGENT_COMPLETED: "completed",
                    EventType.AGENT_CANCELLED: "cancelled",
                }.get(last.type, str(last.data.get("state", "failed")))
                error = None if state in ("completed", "cancelled") else dict(last.data)
            else:
                await self._log.append(
                    RunEvent.build(
                        type=EventType.AGENT_ERROR,
                        run_id=run.id,
                        thread_id=run.thread_id,
                        user_id=run.user_id,
                        seq=len(events) + 1,
                        agent=run.agent,
                        parent_agent=None,
                        data={"state": "dead", **(error or {})},
                    )
                )
            await self._chat.finish_run(
                run.id,
                state=state,
                error=error,
                started_at=run.started_at,
                finished_at=datetime.now(UTC),
                answer_message_id=run.answer_message_id,
            )
        if runs:
            logger.warning("marked %d run(s) left alive by a previous process", len(runs))
        return len(runs)
