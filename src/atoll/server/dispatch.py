"""Run dispatch: where stored runs go to execute — one interface, two implementations.

``atoll serve`` alone executes its runs itself (``LocalRunDispatch``: its own
``RunConsumer`` is the queue); scaled out, API nodes put runs on the Redis run queue
that workers take from (``QueueRunDispatch``). The wiring picks one, once
(``server/services.py``); ``RunService`` and everything that ends a run speak only
to ``RunDispatch``, so neither shape is a branch in them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from atoll.errors import UnavailableError
from atoll.runtime.factory import ExecutionEngineFactory
from atoll.server.cluster import QUEUE_TIMEOUT, REDIS_ERRORS, Cluster
from atoll.server.consumer import RunConsumer
from atoll.store.models import Run
from atoll.store.runs import Claim, NextRun

logger = logging.getLogger(__name__)

QUEUE_DOWN = "the run queue is unavailable; try again shortly"


class RunDispatch(Protocol):
    """Hands stored runs to whatever executes them, and reaches them there."""

    @property
    def healthy(self) -> bool:
        """Whether new runs can be accepted now (else the message is refused with 503)."""

    async def accept(self, run: Run) -> None:
        """Before the message is acknowledged: make sure the stored ``run`` will execute
        (``UnavailableError`` if it cannot; the caller then ends it)."""

    def start(self, run: Run, prepared: Claim | None) -> None:
        """After the acknowledgement (so the ack precedes the run's events): start it."""

    async def dispatch(self, next_run: NextRun) -> None:
        """Hand over a run whose turn came (its claim is conditional: twice is harmless)."""

    async def restart(self, run: Run) -> None:
        """A resend found its run still PENDING: make sure something executes it."""

    async def cancel(self, run_id: str, user_id: str, reason: str) -> None:
        """Reach the run where it executes (``UnavailableError`` if that cannot be done)."""

    def held(self) -> set[str]:
        """The runs this process holds right now (none when others execute them)."""

    async def wait_ended(self, run_ids: list[str], within: float) -> None:
        """Wait, up to ``within`` seconds, for the runs executing here among ``run_ids``."""

    async def drain(self, grace: float) -> None:
        """Shutting down: start no more, give runs ``grace`` seconds, cancel what is left."""

    async def wait_all(self) -> None:
        """Wait until every run executing here has recorded its end."""


class LocalRunDispatch:
    """This process executes its runs: its ``RunConsumer`` is the queue."""

    def __init__(self, consumer: RunConsumer, factory: ExecutionEngineFactory) -> None:
        self.consumer = consumer
        self._factory = factory

    @property
    def healthy(self) -> bool:
        """Always: nothing between the submit and the consumer can be down."""
        return True

    async def accept(self, run: Run) -> None:
        """Nothing to do before the ack: the run is stored, the consumer takes it next."""

    def start(self, run: Run, prepared: Claim | None) -> None:
        """Hand the run to the consumer, with what the submit read (``prepared``)."""
        self.consumer.put(run.id, run.user_id, prepared=prepared)

    async def dispatch(self, next_run: NextRun) -> None:
        """Hand a run whose turn came to the consumer."""
        self.consumer.put(next_run.run_id, next_run.user_id)

    async def restart(self, run: Run) -> None:
        """Start the run unless this process already holds it."""
        if run.id not in self.consumer.known():
            logger.warning("run %s was stored but never started; starting it now", run.id)
            self.consumer.put(run.id, run.user_id)

    async def cancel(self, run_id: str, user_id: str, reason: str) -> None:
        """Cancel the run's engine, or the consumer's hold of it."""
        if not self._factory.cancel(run_id, user_id=user_id, reason=reason):
            self.consumer.cancel(run_id, reason, user_id=user_id)

    def held(self) -> set[str]:
        """The consumer's runs (executing, or in its backlog)."""
        return self.consumer.known()

    async def wait_ended(self, run_ids: list[str], within: float) -> None:
        """Wait for the tasks of those runs."""
        tasks = self.consumer.tasks(run_ids)
        if tasks:
            await asyncio.wait(tasks, timeout=within)

    async def drain(self, grace: float) -> None:
        """The consumer's shutdown (``RunConsumer.drain``): queued runs stay queued for the
        next start."""
        await self.consumer.drain(grace)

    async def wait_all(self) -> None:
        """Wait for every run task of the consumer."""
        tasks = self.consumer.tasks()
        if tasks:
            await asyncio.wait(tasks)


class QueueRunDispatch:
    """Workers execute the runs: they are put on the Redis run queue."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    @property
    def healthy(self) -> bool:
        """Whether Redis answered its last ping."""
        return self._cluster.healthy

    async def accept(self, run: Run) -> None:
        """Queue the run before the ack: a message is acknowledged only once it will run."""
        await self._put(run.id, run.user_id)

    def start(self, run: Run, prepared: Claim | None) -> None:
        """Nothing after the ack: a worker claims it from the queue."""

    async def dispatch(self, next_run: NextRun) -> None:
        """Queue a run whose turn came."""
        await self._put(next_run.run_id, next_run.user_id)

    async def restart(self, run: Run) -> None:
        """Queue the run again (the claim is conditional)."""
        await self._put(run.id, run.user_id)

    async def cancel(self, run_id: str, user_id: str, reason: str) -> None:
        """Signal the worker that executes the run."""
        try:
            await asyncio.wait_for(self._cluster.signals.send(run_id, reason), QUEUE_TIMEOUT)
        except REDIS_ERRORS as exc:
            self._cluster.failed(exc)
            raise UnavailableError("the cancel could not reach the worker; try again") from None

    def held(self) -> set[str]:
        """None: workers hold the runs."""
        return set()

    async def wait_ended(self, run_ids: list[str], within: float) -> None:
        """Nothing executes here: the caller reads the log for their ends."""

    async def drain(self, grace: float) -> None:
        """Nothing executes here."""

    async def wait_all(self) -> None:
        """Nothing executes here."""

    async def _put(self, run_id: str, user_id: str) -> None:
        try:
            await asyncio.wait_for(self._cluster.queue.put(run_id, user_id), QUEUE_TIMEOUT)
        except REDIS_ERRORS as exc:
            self._cluster.failed(exc)
            raise UnavailableError(QUEUE_DOWN, details={"run_id": run_id}) from None
