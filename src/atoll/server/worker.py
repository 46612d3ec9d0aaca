"""``atoll worker``: claims queued runs and executes them, several at once.

A worker reads the run queue as one consumer of the ``workers`` group, up to
``worker_concurrency`` runs at a time. For each entry it *claims* the run in the
database (PENDING -> STARTING, with its id; a run whose turn has not come stays
queued in the database) and executes it with a fresh engine from its factory; events
are logged in the database (which moves the run's row: API nodes read a worker's run
state there), then published to the user's Redis stream. Every heartbeat
(at most a second) it refreshes its presence key, renews its run-slot leases and
picks up cancel flags; pub/sub delivers cancels sooner. It also runs a sweeper.

SIGTERM: ``RunConsumer.drain``, the same shutdown as ``atoll serve``'s: stop taking
entries, hand runs that have not begun back to the queue, give the others
``shutdown_grace`` seconds, then cancel them (each still ends with its terminal
event) and leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atoll.aio import run_every, settle_task
from atoll.bus.queue import CANCEL_CHANNEL, QueuedRun
from atoll.bus.redis import jittered
from atoll.config import Settings
from atoll.runtime.factory import ExecutionEngineFactory
from atoll.server.cluster import REDIS_ERRORS, Cluster
from atoll.server.consumer import RunConsumer
from atoll.server.dispatch import QueueRunDispatch
from atoll.server.metrics import WorkerMetrics
from atoll.server.sweeper import Sweeper
from atoll.store.models import Run
from atoll.store.runs import RunStore

logger = logging.getLogger(__name__)

TAKE_BLOCK_MS = 1000
"""How long one read of the queue blocks (the consume loop checks for SIGTERM between reads)."""


class Worker:
    """One worker process's loop (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: Settings,
        cluster: Cluster,
        store: RunStore,
        factory: ExecutionEngineFactory,
        sweeper: Sweeper,
        worker_id: str,
    ) -> None:
        self._settings = settings
        self._cluster = cluster
        self._store = store
        self._factory = factory
        self._sweeper = sweeper
        self.worker_id = worker_id
        self.capacity = settings.worker_concurrency
        self.consumer = RunConsumer(
            source=cluster.queue,
            store=store,
            factory=factory,
            bus=cluster.bus,
            consumer_id=worker_id,
            capacity=settings.worker_concurrency,
            dispatch=QueueRunDispatch(cluster).dispatch,
            cpu_budget=cluster.cpu_budget,
            before_engine=self._take_slot if settings.run_overflow == "wait" else None,
            release=self._release_entry,
        )
        self._runs = self.consumer.runs
        self._stopping = False
        self._last_beat = time.monotonic()
        self.beat_interval = min(1.0, settings.heartbeat_timeout / 3)
        self._take_backoff = 0.2

    @property
    def executed(self) -> int:
        """Runs this worker executed."""
        return self.consumer.executed

    # -- the loops ---------------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then shut down gracefully."""
        await self._beat()
        done = asyncio.Event()  # heartbeats and sweeps go on while runs drain
        loops = [
            asyncio.create_task(run_every(self.beat_interval, done, self._beat), name="atoll-beat"),
            asyncio.create_task(self._listen_cancels(), name="atoll-worker-cancels"),
            asyncio.create_task(
                self._sweeper.run_forever(self._settings.sweep_interval, done), name="atoll-sweep"
            ),
        ]
        consumer = asyncio.create_task(self._consume(), name="atoll-worker-consume")
        logger.info("worker %s ready (%d concurrent runs)", self.worker_id, self.capacity)
        try:
            await stop.wait()
        finally:
            self._stopping = True
            self.consumer.stop()
            await settle_task(consumer, TAKE_BLOCK_MS / 1000 + 2)
            await self._shutdown()
            done.set()
            for loop in loops:
                await settle_task(loop, 5.0)
            with contextlib.suppress(*REDIS_ERRORS):
                await self._cluster.presence.leave(self.worker_id)
                pending = await self._cluster.queue.pending()
                if not [p for p in pending if p.consumer == self.worker_id]:
                    await self._cluster.queue.forget_consumer(self.worker_id)

    async def _consume(self) -> None:
        await self.consumer.consume(block_ms=TAKE_BLOCK_MS, on_error=self._take_failed)

    async def _take_failed(self, exc: Exception) -> None:
        if not isinstance(exc, REDIS_ERRORS):
            raise exc
        self._cluster.failed(exc)
        await asyncio.sleep(jittered(self._take_backoff))
        self._take_backoff = min(self._take_backoff * 2, 5.0)

    async def _beat(self) -> None:
        info = orjson.dumps({"runs": len(self._runs), "capacity": self.capacity}).decode()
        try:
            await self._cluster.presence.beat(self.worker_id, info)
            await self._cluster.slots.renew()
            requested = await self._cluster.signals.requested(list(self._runs))
        except REDIS_ERRORS as exc:
            self._cluster.failed(exc)
            silent = time.monotonic() - self._last_beat
            if silent > self._settings.heartbeat_timeout and self._runs:
                logger.error(
                    "no heartbeat for %.0fs: other nodes may consider this worker dead", silent
                )
            return
        self._last_beat = time.monotonic()
        self._take_backoff = 0.2  # Redis answers: a failed take starts backing off afresh
        for run_id, reason in requested.items():
            self._cancel(run_id, reason)

    async def _listen_cancels(self) -> None:
        backoff = 0.2
        while not self._stopping:
            pubsub = self._cluster.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CANCEL_CHANNEL)
                backoff = 0.2
                while not self._stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    run_id = message["data"].decode()
                    if run_id in self._runs:
                        requested = await self._cluster.signals.requested([run_id])
                        if run_id in requested:
                            self._cancel(run_id, requested[run_id])
            except REDIS_ERRORS as exc:
                self._cluster.failed(exc)
                await asyncio.sleep(jittered(backoff))
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- observing it --------------------------------------------------------------

    def http_app(self) -> Starlette:
        """``/metrics`` (Prometheus), ``/healthz`` and ``/readyz`` of this worker."""
        metrics = WorkerMetrics(self._factory.tracker)

        async def prometheus(request: Request) -> Response:
            metrics.held.set(len(self._runs))
            metrics.capacity.set(self.capacity)
            metrics.requeued.set(self._sweeper.requeued)
            metrics.dead.set(self._sweeper.dead)
            with contextlib.suppress(*REDIS_ERRORS):
                metrics.queue_depth.set(await self._cluster.queue.depth())
            return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

        async def healthz(request: Request) -> JSONResponse:
            return JSONResponse({"status": "ok"})

        async def readyz(request: Request) -> JSONResponse:
            database = await self._store.db.ping()
            redis = await self._cluster.ping()
            ready = database and redis and not self._stopping
            body = {
                "status": "ready" if ready else "unavailable",
                "database": "ok" if database else "unreachable",
                "redis": "ok" if redis else "unreachable",
                "accepting": not self._stopping,
                "runs": len(self._runs),
            }
            return JSONResponse(body, status_code=200 if ready else 503)

        return Starlette(
            routes=[
                Route("/metrics", prometheus),
                Route("/healthz", healthz),
                Route("/readyz", readyz),
            ]
        )

    # -- one run -------------------------------------------------------------------

    def _cancel(self, run_id: str, reason: str) -> None:
        self.consumer.cancel(run_id, reason)

    async def _take_slot(self, run: Run, plan: str) -> None:
        """Take the user's slot under the run's id before the engine exists, so that the
        engine's own acquire succeeds at once; until then the run can be handed back or
        cancelled without any event."""
        await self._cluster.slots.acquire(run.user_id, run.id, self._factory.runs_at_once(plan))

    async def _release_entry(self, entry: QueuedRun) -> None:
        if entry.run_id in self._cluster.slots.held:  # taken, but the run never began
            with contextlib.suppress(*REDIS_ERRORS):
                await self._cluster.slots.release(entry.user_id, entry.run_id)
        with contextlib.suppress(*REDIS_ERRORS):
            await self._cluster.queue.ack(entry.entry_id)  # else the sweeper acks it

    # -- stopping ------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """The consumer's one shutdown (``RunConsumer.drain``), as ``atoll serve``'s."""
        await self.consumer.drain(self._settings.shutdown_grace)
