"""Finding runs whose worker died, on every node and worker of a scaled-out cluster.

Every ``sweep_interval`` the sweeper looks at the workers that hold runs (the
``worker_id`` of alive runs in the database) and at the consumers with
unacknowledged queue entries. A worker whose heartbeat key has been missing
for ``grace`` seconds, as seen by this sweeper, is dead. Its runs:

- a run that has not emitted any event and was claimed at most ``retries``
  times is given back to the queue (another worker runs it);
- any other run is ended DEAD with an ``agent_error`` (``worker_lost``):
  running it again could repeat its tool calls' side effects.

Queue entries a dead worker received but never claimed in the database are
queued again. Every decision is a conditional update in the database, so of
several sweepers racing, one wins. When Redis lost its data (a new epoch), the
runs still waiting in the database are queued again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from atoll.aio import run_every
from atoll.bus.queue import QueuedRun
from atoll.runtime.endings import QUEUE_TIMEOUT, WORKER_LOST, Ending
from atoll.runtime.events import RunEventBus
from atoll.runtime.state import ExecutionState
from atoll.server.cluster import REDIS_ERRORS, Cluster
from atoll.server.dispatch import QueueRunDispatch
from atoll.server.execution import end_outside
from atoll.store.models import Run
from atoll.store.runs import RunStore

logger = logging.getLogger(__name__)

WORKER_LOST_MESSAGE = "the worker executing this run stopped"
CLAIM_IDLE_MS = 1000
"""Entries idle this long can be taken over; a sweeper that just took one resets it."""


class Sweeper:
    """Detects dead workers and settles their runs (see the module docstring)."""

    def __init__(
        self,
        *,
        cluster: Cluster,
        store: RunStore,
        bus: RunEventBus,
        retries: int,
        queue_timeout: float,
        grace: float = 2.0,
    ) -> None:
        self._cluster = cluster
        self._queue = QueueRunDispatch(cluster)
        self._store = store
        self._bus = bus
        self.retries = retries
        self.queue_timeout = queue_timeout
        self.grace = grace
        self.consumer = f"sweeper-{cluster.node_id}"
        self._missing_since: dict[str, float] = {}
        self._epoch: str | None = None
        self.requeued = 0
        self.dead = 0

    async def run_forever(self, interval: float, stop: asyncio.Event) -> None:
        """Sweep every ``interval`` seconds until ``stop`` is set."""
        await run_every(interval, stop, self._sweep_logged)

    async def _sweep_logged(self) -> None:
        try:
            await self.sweep()
        except REDIS_ERRORS as exc:
            self._cluster.failed(exc)
            self._missing_since.clear()  # heartbeats could not be seen: judge nobody
        except Exception:
            logger.exception("sweeping for dead workers failed")

    async def sweep(self) -> None:
        """One pass: new epoch, dead workers' runs, dead consumers' queue entries."""
        epoch = await self._cluster.queue.epoch()
        if self._epoch is not None and epoch != self._epoch:
            await self._requeue_waiting()
        self._epoch = epoch
        runs = list(await self._store.alive(claimed=True))
        pending = await self._cluster.queue.pending()
        holders = {run.worker_id for run in runs if run.worker_id is not None}
        holders |= {p.consumer for p in pending if not p.consumer.startswith("sweeper-")}
        dead = self._dead(holders, await self._cluster.presence.alive(holders))
        stale = [p.entry_id for p in pending if p.consumer in dead or p.consumer == self.consumer]
        # Entries first: a run the dead worker had claimed is settled once, below.
        for entry in await self._cluster.queue.claim(self.consumer, CLAIM_IDLE_MS, stale):
            await self._settle_entry(entry)
        for consumer in {p.consumer for p in pending if p.consumer in dead}:
            await self._cluster.queue.forget_consumer(consumer)
        for run in runs:
            if run.worker_id is not None and run.worker_id in dead:
                await self._settle(run, run.worker_id)
        await self._expire_queued()

    def _dead(self, holders: set[str], alive: set[str]) -> set[str]:
        now = time.monotonic()
        for worker in alive:
            self._missing_since.pop(worker, None)
        dead = set()
        for worker in holders - alive:
            since = self._missing_since.setdefault(worker, now)
            if now - since >= self.grace:
                dead.add(worker)
        for worker in [w for w in self._missing_since if w not in holders]:
            del self._missing_since[worker]
        return dead

    async def _settle(self, run: Run, worker_id: str) -> None:
        """Re-queue or end one alive run of a dead worker."""
        if await self._store.requeue(run.id, worker_id, max_attempts=self.retries):
            await self._cluster.queue.put(run.id, run.user_id)
            self.requeued += 1
            logger.warning("run %s: worker %s died before it began; re-queued", run.id, worker_id)
            return
        ending = Ending.failure(ExecutionState.DEAD, WORKER_LOST, WORKER_LOST_MESSAGE)
        if await end_outside(
            self._store,
            self._bus,
            run.id,
            ending,
            dispatch=self._queue.dispatch,
            held_by=worker_id,
        ):
            self.dead += 1
            logger.warning("run %s: worker %s died; marked dead", run.id, worker_id)

    async def _settle_entry(self, entry: QueuedRun) -> None:
        """A queue entry taken over from a dead consumer."""
        run = await self._store.find(entry.run_id)
        if run is not None and run.state == ExecutionState.PENDING.value and run.worker_id is None:
            await self._cluster.queue.put(run.id, run.user_id)  # delivered, never claimed
        await self._cluster.queue.ack(entry.entry_id)

    async def _expire_queued(self) -> None:
        """End runs no worker claimed within the queue timeout (no worker running?)."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.queue_timeout)
        message = f"no worker took this run within {self.queue_timeout:g}s"
        ending = Ending.failure(ExecutionState.TIMEOUT, QUEUE_TIMEOUT, message)
        for run in await self._store.claimable(queued_before=cutoff):
            ended = await end_outside(
                self._store,
                self._bus,
                run.id,
                ending,
                dispatch=self._queue.dispatch,
                queued_only=True,
            )
            if ended:
                logger.warning("run %s: %s", run.id, message)

    async def _requeue_waiting(self) -> None:
        """Redis lost its data: queue again every run still waiting in the database."""
        waiting = await self._store.claimable()
        for run in waiting:
            await self._cluster.queue.put(run.id, run.user_id)
        logger.warning("redis lost its data; re-queued %d waiting run(s)", len(waiting))
