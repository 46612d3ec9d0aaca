"""Accepting messages, cancelling runs and deleting threads: the application's run service.

``RunService.submit`` stores the user's message and the PENDING run in one
transaction (``RunStore.submit``; every database step of a run is in
``atoll.store.runs``) *before* anything is acknowledged, then hands the run to its
``RunDispatch`` — this process's consumer, or the Redis run queue a worker takes it
from; which one is decided once, in the wiring. The answer is stored by the completion
hook before ``agent_completed`` is emitted; the run's row follows its log. On start, a
single process marks runs that a crash left in progress DEAD, with an ``agent_error``
event their users can read; scaled out, the sweeper does that for runs whose worker died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import Any

from atoll.auth.principal import Principal
from atoll.errors import (
    AtollError,
    CpuBudgetError,
    RateLimitedError,
    UnavailableError,
)
from atoll.ratelimit import CostBudget, RateLimiter
from atoll.runtime.endings import RUN_DEAD, Ending
from atoll.runtime.factory import ExecutionEngineFactory
from atoll.runtime.plans import Plan, PlanCatalog
from atoll.runtime.state import ExecutionState
from atoll.server.dispatch import QUEUE_DOWN, RunDispatch
from atoll.server.execution import end_outside
from atoll.server.notices import UserNotices
from atoll.store.audit import AuditLog
from atoll.store.chat import ChatStore
from atoll.store.models import Run, utcnow
from atoll.store.runs import Claim, NextRun, RunStore, Submission, Submitted
from atoll.store.usage import UsageStore

logger = logging.getLogger(__name__)

DEFAULT_AGENT = "supervisor"
DELETE_GRACE = 10.0
"""Seconds a deleted thread's executing runs have to end once cancelled."""
STALL_AFTER = 5.0
"""Seconds after which a PENDING run nothing in this process runs counts as stalled."""


Acknowledge = Callable[[Submitted], None]
"""Called once a submitted run is stored, before it can emit anything; must not raise."""


class RunService:
    """Stores messages, starts and cancels runs, and records how they end."""

    def __init__(
        self,
        *,
        chat: ChatStore,
        store: RunStore,
        factory: ExecutionEngineFactory,
        audit: AuditLog,
        message_limiter: RateLimiter,
        default_agent: str = DEFAULT_AGENT,
        notices: UserNotices,
        plans: PlanCatalog,
        usage: UsageStore,
        runs: RunDispatch,
        cpu_budget: CostBudget,
    ) -> None:
        self._chat = chat
        self._runs = runs
        self._cpu_budget = cpu_budget
        self._notices = notices
        self._store = store
        self._factory = factory
        self._bus = factory.recorder.bus
        self._audit = audit
        self._limiter = message_limiter
        self._plans = plans
        self._usage = usage
        self.default_agent = default_agent
        self._submissions: set[asyncio.Task[Submitted]] = set()
        self._stored: set[str] = set()
        """Runs stored by a submission that has not started (or queued) them yet."""

    # -- submitting --------------------------------------------------------------

    async def submit(
        self,
        principal: Principal,
        submission: Submission,
        *,
        acknowledge: Acknowledge | None = None,
    ) -> Submitted:
        """Store the message and a PENDING run (atomically), then start the run.

        Every door hands over one ``Submission``. Storing and starting are one unit that
        cancelling the caller cannot split (a socket that closes mid-send): they run in a
        task of their own, which the caller only waits for. ``acknowledge(submitted)`` is
        called once the run is stored and before it can emit anything (the WebSocket
        queues its ``ack`` there, so the ack precedes every event of the run). A resend of
        a ``client_id`` returns the run it started, restarted first if nothing runs it.
        """
        plan = self._plans.get(principal.plan)
        agent = submission.agent
        agent_name = agent if agent is not None else self.default_agent_of(plan)
        self._factory.registry.agent(agent_name)  # unknown agent: 422 before anything is stored
        plan.check_agent(agent_name)
        if not self._runs.healthy:
            raise UnavailableError(QUEUE_DOWN)  # nothing stored: the client may simply retry
        # Resends of a client_id count too: the limit is on frames, and this saves a read.
        retry_after = await self._limiter.hit(
            f"messages:{principal.user_id}", plan.messages_per_minute
        )
        if retry_after is not None:
            raise RateLimitedError(
                f"message rate limit reached; retry in {retry_after:.1f}s",
                retry_after=retry_after,
            )
        # Spent budgets refuse the message before it is stored (and a run that was
        # admitted here is checked again when it starts: see engine_factory).
        await self._usage.check(principal.user_id, plan, utcnow())
        await self._check_cpu(principal.user_id)

        store = partial(
            self._store.submit,
            principal.user_id,
            submission,
            agent=agent_name,
            runs_at_once=plan.runs_at_once,
        )
        job = asyncio.create_task(
            self._store_and_start(principal, store, submission.multitask, acknowledge),
            name="atoll-submit",
        )
        self._submissions.add(job)
        job.add_done_callback(self._submission_done)
        return await asyncio.shield(job)

    async def _check_cpu(self, user_id: str) -> None:
        """Refuse a message while the user's runs are over their CPU budget."""
        wait = await self._cpu_budget.check(user_id)
        if wait is not None:
            raise CpuBudgetError(
                f"your recent runs have used this server's CPU budget for you; "
                f"retry in {wait:.1f}s",
                retry_after=wait,
            )

    def default_agent_of(self, plan: Plan) -> str:
        """The agent of a message that names none: the server's default when the plan
        includes it, else the first (by name) of the plan's agents."""
        if plan.allows_agent(self.default_agent) or plan.agents is None:
            return self.default_agent
        included = sorted(name for name in plan.agents if name in self._factory.registry.agents)
        return included[0] if included else self.default_agent

    async def _store_and_start(
        self,
        principal: Principal,
        store: Callable[[], Awaitable[tuple[Submitted, list[str]]]],
        multitask: str,
        acknowledge: Acknowledge | None,
    ) -> Submitted:
        known = self._here()  # before the write's read: see start_stalled
        submitted, alive = await store()
        if not submitted.created:
            await self._restart_if_stuck(submitted, known)
        else:
            self._stored.add(submitted.run.id)
            try:
                # Before the run can emit: the user's other tabs get the question first.
                await self._notices.message(submitted.message, submitted.thread)
                if alive and multitask == "interrupt":
                    for previous in alive:
                        await self._cancel_anywhere(
                            previous, principal.user_id, reason="interrupted"
                        )
                await self._accept(submitted.run)
            finally:
                self._stored.discard(submitted.run.id)
        if acknowledge is not None:
            acknowledge(submitted)
        if submitted.created:
            # With what the submit already read, the claim is a bare conditional UPDATE;
            # behind an alive run, the claim reads the history afresh once its turn comes.
            prepared = None
            if not alive:
                prepared = Claim(
                    submitted.run,
                    submitted.message,
                    principal.plan,
                    principal.roles,
                    history=submitted.history,
                    org_id=principal.org_id,
                )
            self._runs.start(submitted.run, prepared)
        return submitted

    async def _accept(self, run: Run) -> None:
        """Make sure the stored run will execute before it is acknowledged; if that cannot
        be done (the queue is down), end it and answer 503."""
        try:
            await self._runs.accept(run)
        except UnavailableError:
            ending = Ending.failure(ExecutionState.FAILED, UnavailableError.code, QUEUE_DOWN)
            await end_outside(
                self._store, self._bus, run.id, ending, dispatch=self.dispatch, queued_only=True
            )
            raise

    async def dispatch(self, next_run: NextRun) -> None:
        """Hand a run whose turn came to whatever executes runs (``RunDispatch``)."""
        await self._runs.dispatch(next_run)

    def _submission_done(self, job: asyncio.Task[Submitted]) -> None:
        self._submissions.discard(job)
        if job.cancelled():
            return
        error = job.exception()  # retrieved here too: the caller may be gone
        if error is not None and not isinstance(error, AtollError):
            logger.error("storing or starting a run failed", exc_info=error)

    def _here(self) -> set[str]:
        """The runs this process is storing, about to queue, or holding in its consumer."""
        return self._runs.held() | self._stored

    async def _restart_if_stuck(self, submitted: Submitted, known: set[str]) -> None:
        """A resend found its run: make sure something will run it if it is still PENDING.

        ``known`` is what ran here before the run was read: a run that ended meanwhile was
        read as PENDING. Dispatching a run twice is harmless: the claim is conditional.
        """
        run = submitted.run
        if run.state == ExecutionState.PENDING.value and run.id not in known | self._here():
            await self._runs.restart(run)

    async def start_stalled(self, *, older_than: float = STALL_AFTER) -> int:
        """Dispatch again PENDING runs whose turn came long ago and nothing here holds (the
        sweep of a single process); how many.

        Defence in depth: a stored run is dispatched by the submission that stored it, and a
        waiting one by the run it waited for, so this should find nothing.
        """
        # Who holds what, taken *before* the database is read: a run that ends during
        # the read is still PENDING in what the read returns, but it is in this snapshot.
        known = self._here()
        cutoff = utcnow() - timedelta(seconds=older_than)
        started = 0
        for run in await self._store.claimable(queued_before=cutoff):
            if run.id in known or run.id in self._here():
                continue
            await self._runs.restart(run)
            started += 1
        return started

    # -- cancelling ----------------------------------------------------------------

    async def _cancel_anywhere(self, run_id: str, user_id: str, *, reason: str) -> None:
        """Cancel a run wherever it is: still queued (ended here), or where it executes."""
        cancelled = Ending.cancelled(reason)
        ended = await end_outside(
            self._store, self._bus, run_id, cancelled, dispatch=self.dispatch, queued_only=True
        )
        if not ended:
            await self._runs.cancel(run_id, user_id, reason)

    async def cancel(self, principal: Principal, run_id: str, *, reason: str = "user") -> Run:
        """Cancel the user's run (idempotent; a finished run is returned as it is)."""
        run = await self._chat.run(principal.user_id, run_id)
        if ExecutionState.parse(run.state).is_alive:
            await self._cancel_anywhere(run_id, principal.user_id, reason=reason)
            await self._audit.record("run_cancel", user_id=principal.user_id, run_id=run_id)
        return run

    async def delete_thread(self, user_id: str, thread_id: str) -> None:
        """Delete the user's thread as an ending of its runs.

        First, in one transaction, the thread is marked (it is missing from then on, and no
        run can be stored on or claimed from it) and its queued runs end; then its
        executing runs are cancelled and waited for (``DELETE_GRACE`` seconds, then ended
        where they stand: an engine still going finds its log closed). Only when every run
        of the thread has ended with its terminal event are the rows deleted — so nothing of
        the thread runs or streams after the caller's 204.
        """
        ending = Ending.cancelled("thread_deleted")
        events, executing = await self._store.close_thread(user_id, thread_id, ending)
        for event in events:
            with contextlib.suppress(Exception):  # the event is logged; readers catch up
                await self._bus.publish(event)
        for run_id in executing:
            await self._cancel_anywhere(run_id, user_id, reason="thread_deleted")
        left = await self._until_ended(user_id, executing, DELETE_GRACE)
        for run_id in left:
            logger.warning("run %s did not end when cancelled; ending it", run_id)
            await end_outside(self._store, self._bus, run_id, ending, dispatch=self.dispatch)
        await self._chat.delete_thread(user_id, thread_id)

    async def _until_ended(self, user_id: str, run_ids: list[str], within: float) -> list[str]:
        """Wait up to ``within`` seconds for ``run_ids`` to end; those still alive."""
        await self._runs.wait_ended(run_ids, within)
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + within, 0.02
        while run_ids:
            run_ids = [r.id for r in await self._store.alive_of(user_id, run_ids)]
            if not run_ids or loop.time() >= deadline:
                break
            await asyncio.sleep(pause)  # on another process (a worker): its end is in the log
            pause = min(pause * 2, 0.5)
        return run_ids

    # -- state -------------------------------------------------------------------

    def live_state(self, run: Run) -> dict[str, Any]:
        """The run's fields, as its row says: the row is derived from its log (its start and
        its end move it in the transaction that logs them), so it is the live state too."""
        return {
            "id": run.id,
            "thread_id": run.thread_id,
            "agent": run.agent,
            "state": run.state,
            "created_at": run.created_at,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "error": run.error,
        }

    async def drain(self, grace: float) -> None:
        """Shutting down: see ``RunDispatch.drain``."""
        await self._runs.drain(grace)

    async def wait_all(self) -> None:
        """Wait until every submission and run task has recorded its end."""
        if self._submissions:
            await asyncio.wait(list(self._submissions))
        await self._runs.wait_all()

    # -- recovery ------------------------------------------------------------------

    async def recover(self) -> int:
        """Mark runs a crash of this (single) process left in progress DEAD and tell their
        users; runs that were only queued (PENDING) stay queued and start (``start_stalled``)."""
        runs = [r for r in await self._store.alive() if r.state != ExecutionState.PENDING.value]
        ending = Ending.failure(
            ExecutionState.DEAD, RUN_DEAD, "the server stopped while this run was in progress"
        )
        for run in runs:
            await self._store.end(run.id, ending)
        if runs:
            logger.warning("marked %d run(s) left alive by a previous process", len(runs))
        return len(runs)
