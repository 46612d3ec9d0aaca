"""Executing queued runs: the one execution strategy of every process that runs agents.

A run is stored PENDING and dispatched. A consumer takes the entry and claims
the run in the database (PENDING -> STARTING; conditional, so a duplicate entry,
a run cancelled while queued, or a run whose thread still has an earlier run
alive is skipped), executes it with a fresh engine and records how it ended.
A run that is not its thread's turn yet is held by nothing — no task, no memory,
no polling: when the run before it ends, whoever ends it dispatches it
(``execution.hand_over``). ``atoll serve`` on its own is its own queue: ``put``
hands a stored run straight to its consumer (a run is never waiting in memory,
so nothing is lost on a stop); scaled out, every ``atoll worker`` takes from the
Redis queue (``atoll.bus.queue.RunQueue``). Both then run this same code.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from atoll.aio import settle_task
from atoll.bus.queue import QueuedRun
from atoll.errors import UnavailableError
from atoll.ratelimit import CostBudget
from atoll.runtime.context import UserExecutionContext
from atoll.runtime.endings import Ending
from atoll.runtime.events import RunEventBus
from atoll.runtime.factory import ExecutionEngineFactory
from atoll.runtime.ids import new_id
from atoll.server.execution import Dispatch, end_outside, execute_run
from atoll.store.models import Run
from atoll.store.runs import Claim, NextRun, RunStore

logger = logging.getLogger(__name__)


class RunSource(Protocol):
    """Where a consumer takes runs from: the in-process queue or the Redis one."""

    async def take(self, consumer: str, count: int, block_ms: int) -> list[QueuedRun]:
        """Up to ``count`` entries, waiting up to ``block_ms`` for the first."""

    async def ack(self, *entry_ids: str) -> None:
        """The entries are handled."""


class RecentCost:
    """CPU seconds each user's runs took in this process, halved every ``half_life`` seconds."""

    def __init__(self, half_life: float = 60.0, *, clock: Callable[[], float] = time.monotonic):
        self.half_life = half_life
        self._clock = clock
        self._spent: dict[str, tuple[float, float]] = {}

    def add(self, user_id: str, seconds: float) -> None:
        """Count ``seconds`` more for ``user_id``."""
        now = self._clock()
        if len(self._spent) >= 4096:  # forget those whose cost has decayed away
            self._spent = {u: v for u, v in self._spent.items() if self._now(v, now) > 1e-4}
        self._spent[user_id] = (self.of(user_id) + seconds, now)

    def of(self, user_id: str) -> float:
        """What ``user_id``'s runs cost lately (0 for a user never seen)."""
        spent = self._spent.get(user_id)
        return 0.0 if spent is None else self._now(spent, self._clock())

    def _now(self, spent: tuple[float, float], now: float) -> float:
        value, at = spent
        return float(value * 0.5 ** ((now - at) / self.half_life))


@dataclass
class LocalRun:
    """A queue entry this consumer is handling."""

    entry: QueuedRun
    task: asyncio.Task[None]
    claimed: bool = False
    """Whether its claim is done (before, a cancel is only recorded: the claim finishes,
    then the request is seen; cancelling mid-claim could leave the run STARTING)."""
    began: bool = False
    """Whether its engine exists (it can no longer be handed back)."""


BeforeEngine = Callable[[Run, str], Awaitable[None]]
"""``hook(run, plan)``: after the thread's turn, before the engine (a worker takes the slot)."""


class RunConsumer:
    """Takes runs from a ``RunSource`` and executes them, up to ``capacity`` at once."""

    def __init__(
        self,
        *,
        source: RunSource | None = None,
        store: RunStore,
        factory: ExecutionEngineFactory,
        bus: RunEventBus,
        consumer_id: str,
        capacity: int,
        dispatch: Dispatch | None = None,
        cpu_budget: CostBudget | None = None,
        before_engine: BeforeEngine | None = None,
        release: Callable[[QueuedRun], Awaitable[None]] | None = None,
    ) -> None:
        self._source = source
        self._store = store
        self._factory = factory
        self._bus = bus
        self.consumer_id = consumer_id
        self.capacity = capacity
        self._cpu_budget = cpu_budget
        """Where each run's measured CPU is charged to its user (checked at submit)."""
        self.costs = RecentCost()
        """What each user's runs cost here lately: the order of the backlog."""
        self._backlog: list[tuple[float, int, QueuedRun]] = []
        self._backlogged: set[str] = set()
        self.dispatch: Dispatch = dispatch if dispatch is not None else self._put_next
        """How a run that ends here hands the turn to its thread's next run (default: this
        consumer, the in-process queue)."""
        self._prepared_runs: dict[str, Claim] = {}
        self._ids = itertools.count(1)
        self._before_engine = before_engine
        self._release = release
        self.runs: dict[str, LocalRun] = {}
        self._cancel_requests: dict[str, str] = {}
        self._room = asyncio.Event()
        self.stopping = False
        self.executed = 0

    # -- the loop ----------------------------------------------------------------------

    async def consume(
        self, *, block_ms: int, on_error: Callable[[Exception], Awaitable[None]]
    ) -> None:
        """Take and start entries until ``stop()``; ``on_error`` handles a failed take."""
        if self._source is None:
            raise RuntimeError("this consumer has no queue to take from (runs are put)")
        while not self.stopping:
            free = self.capacity - len(self.runs)
            if free <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                entries = await self._source.take(self.consumer_id, free, block_ms)
            except Exception as exc:
                await on_error(exc)
                continue
            for entry in entries:
                self.start(entry)

    def start(self, entry: QueuedRun) -> None:
        """Handle ``entry`` in a task of its own."""
        task = asyncio.create_task(self._handle(entry), name=f"run {entry.run_id}")
        self.runs[entry.run_id] = LocalRun(entry, task)

    def put(self, run_id: str, user_id: str, *, prepared: Claim | None = None) -> None:
        """The in-process queue: handle a stored run now, with what ``submit`` already read
        (``prepared``: the claim is then a bare conditional UPDATE). A run put twice (a
        resend, the stall sweep) is claimed once; one put while stopping stays queued.

        At ``capacity``, the run waits for room in a backlog ordered by its user's recent
        CPU (``RecentCost``), not by arrival: a user whose runs have been costly goes after
        those whose runs have not.
        """
        if run_id in self.runs or run_id in self._backlogged or self.stopping:
            return
        if prepared is not None:
            self._prepared_runs[run_id] = prepared
        entry = QueuedRun(f"local-{next(self._ids)}", run_id, user_id)
        if len(self.runs) < self.capacity:
            self.start(entry)
            return
        self._backlogged.add(run_id)
        heapq.heappush(self._backlog, (self.costs.of(user_id), next(self._ids), entry))

    def _start_backlog(self) -> None:
        while self._backlog and len(self.runs) < self.capacity and not self.stopping:
            _, _, entry = heapq.heappop(self._backlog)
            self._backlogged.discard(entry.run_id)
            self.start(entry)

    async def _put_next(self, next_run: NextRun) -> None:
        self.put(next_run.run_id, next_run.user_id)

    def tasks(self, run_ids: list[str] | None = None) -> list[asyncio.Task[None]]:
        """The tasks of the runs held (of ``run_ids`` only, if given)."""
        if run_ids is None:
            return [local.task for local in self.runs.values()]
        return [self.runs[r].task for r in run_ids if r in self.runs]

    def stop(self) -> None:
        """Take no more entries (the runs taken go on)."""
        self.stopping = True
        self._room.set()

    async def drain(self, grace: float) -> None:
        """The one shutdown of every process that executes runs: take nothing more, hand the
        runs held that had not begun back to the queue (they stay PENDING and run on another
        worker, or after the restart), give those executing ``grace`` seconds, then cancel
        what is left (each still ends with its terminal event) and wait for it."""
        self.stop()
        for run_id, local in list(self.runs.items()):
            if local.began:
                continue
            await settle_task(local.task, 0)  # cancel it (bounded: see atoll.aio)
            if await self._store.requeue(run_id, self.consumer_id):
                await self.dispatch(NextRun(run_id, local.entry.user_id))
                logger.info("run %s handed back to the queue", run_id)
        running = [local.task for local in self.runs.values() if local.began]
        if running and grace > 0:
            logger.info("waiting up to %gs for %d run(s)", grace, len(running))
            await asyncio.wait(running, timeout=grace)
        await self._factory.aclose("shutdown")
        remaining = self.tasks()
        if remaining:
            await asyncio.wait(remaining)

    def known(self) -> set[str]:
        """The runs this consumer holds right now (executing, or in its backlog)."""
        return set(self.runs) | self._backlogged

    # -- cancelling ------------------------------------------------------------------

    def cancel(self, run_id: str, reason: str, *, user_id: str | None = None) -> bool:
        """Cancel a run this consumer holds (executing, or waiting to); False if it holds none
        (or, with ``user_id``, none of that user's)."""
        local = self.runs.get(run_id)
        if local is None or (user_id is not None and local.entry.user_id != user_id):
            return False
        if self._factory.cancel(run_id, user_id=local.entry.user_id, reason=reason):
            return True
        self._cancel_requests.setdefault(run_id, reason)
        if local.claimed and not local.began:  # waiting for its thread or a slot: stop waiting
            local.task.cancel()
        return True  # not claimed yet: the request is seen once the claim is done

    # -- one run -------------------------------------------------------------------------

    async def _handle(self, entry: QueuedRun) -> None:
        try:
            await self._execute(entry)
        except asyncio.CancelledError:
            raise
        except UnavailableError as exc:  # the database: the run stays queued, or is ended later
            logger.warning("run %s could not be executed now: %s", entry.run_id, exc.message)
        except Exception:
            logger.exception("run %s could not be executed", entry.run_id)
        finally:
            self.runs.pop(entry.run_id, None)
            self._prepared_runs.pop(entry.run_id, None)
            self._cancel_requests.pop(entry.run_id, None)
            self._room.set()
            self._start_backlog()
            if self._release is not None:
                await self._release(entry)

    async def _claim(self, entry: QueuedRun) -> Claim | None:
        prepared = self._prepared_runs.pop(entry.run_id, None)
        if prepared is not None:
            taken = await self._store.take(entry.run_id, self.consumer_id, prepared.plan)
            return prepared if taken else None
        return await self._store.claim(entry.run_id, self.consumer_id)

    async def _execute(self, entry: QueuedRun) -> None:
        claim = await self._claim(entry)
        if claim is None:
            return  # not its turn yet (the run before it dispatches it), cancelled, or a duplicate
        local = self.runs.get(entry.run_id)
        if local is not None:
            local.claimed = True
        reason = self._cancel_requests.get(entry.run_id)
        if reason is not None:  # cancelled while it was being claimed
            await self._end_waiting(entry.run_id, reason)
            return
        run, message, history = claim.run, claim.message, claim.history
        try:
            if self._before_engine is not None:
                await self._before_engine(run, claim.plan)
        except asyncio.CancelledError:
            reason = self._cancel_requests.get(entry.run_id)
            if reason is None or self.stopping:
                raise  # shutting down: the owner hands it back
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self._end_waiting(entry.run_id, reason)
            return
        context = UserExecutionContext(
            user_id=run.user_id,
            thread_id=run.thread_id,
            run_id=run.id,
            request_id=new_id("req"),
            plan=claim.plan,
            roles=claim.roles,
            org_id=claim.org_id,
        )
        local = self.runs.get(entry.run_id)
        if local is not None:
            local.began = True
        outcome = await execute_run(
            self._factory,
            self._store,
            context,
            agent=run.agent,
            message=message,
            history=history,
            cancel_reason=lambda: self._cancel_requests.pop(run.id, None),
            dispatch=self.dispatch,
            worker_id=self.consumer_id,
        )
        self.executed += 1
        if outcome is not None:
            self.costs.add(run.user_id, outcome.cpu_seconds)
        if outcome is not None and self._cpu_budget is not None:
            try:
                await self._cpu_budget.charge(run.user_id, outcome.cpu_seconds)
            except Exception:
                logger.warning("the CPU of run %s could not be charged to its user", run.id)

    async def _end_waiting(self, run_id: str, reason: str) -> None:
        """End a run cancelled while it waited (it has no event yet)."""
        ending = Ending.cancelled(reason)
        await end_outside(
            self._store,
            self._bus,
            run_id,
            ending,
            dispatch=self.dispatch,
            held_by=self.consumer_id,
        )
