"""What an API node or a worker shares with the rest of a scaled-out deployment.

``Cluster`` bundles the Redis client and everything built on it (queue,
presence, cancel signals, event publishing, shared limits) and tracks whether
Redis answers: while it does not, API nodes refuse new runs at once with a 503
problem instead of storing messages they cannot queue, and everything resumes
by itself when a ping succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from atoll.aio import run_every, settle_task
from atoll.bus.queue import CancelSignals, RunQueue, WorkerPresence
from atoll.bus.redis import (
    RedisCostBudget,
    RedisEventBus,
    RedisFailureCounter,
    RedisRateLimiter,
    RedisRunSlots,
    RedisSessionRevocations,
)
from atoll.config import Settings

logger = logging.getLogger(__name__)

QUEUE_TIMEOUT = 5.0
"""Seconds a Redis call on the request path may take before the request fails (503)."""
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
"""What a Redis call raises when Redis is unreachable or slow."""


def redis_retry() -> Retry:
    """One immediate retry (a pooled connection Redis dropped), then the error.

    Set on purpose: redis-py's default (10 attempts with backoff) makes a call to a
    stopped Redis last tens of seconds, so a 2 s health check times out while the
    client is still sleeping between attempts, and a recovered Redis looks down.
    Every loop here has its own backoff (``jittered``); requests fail fast (503).
    """
    return Retry(NoBackoff(), 1)


def process_id(prefix: str) -> str:
    """A name for this process that no other process in the cluster shares."""
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Cluster:
    """This process's view of the shared Redis."""

    def __init__(self, redis: Redis, settings: Settings, *, node_id: str) -> None:
        self.redis = redis
        self.node_id = node_id
        self.queue = RunQueue(redis)
        self.presence = WorkerPresence(redis, timeout=settings.heartbeat_timeout)
        self.signals = CancelSignals(redis, ttl=settings.run_timeout + 60)
        self.bus = RedisEventBus(redis, retention=settings.event_retention_hours * 3600)
        self.slots = RedisRunSlots(
            redis, settings.max_concurrent_runs, lease=settings.heartbeat_timeout
        )
        self.message_limiter = RedisRateLimiter(
            redis, settings.messages_per_minute, 60.0, prefix="messages"
        )
        self.tool_limiter = RedisRateLimiter(
            redis, settings.tool_calls_per_minute, 60.0, prefix="tools", fail_open=True
        )
        self.signup_limiter = RedisRateLimiter(
            redis, settings.signups_per_hour, 3600.0, prefix="signups"
        )
        self.login_failures = RedisFailureCounter(
            redis, settings.login_failures_window, prefix="login"
        )
        self.revocations = RedisSessionRevocations(redis)
        self.cpu_budget = RedisCostBudget(
            redis, settings.cpu_budget_seconds, settings.cpu_budget_period, prefix="cpu"
        )
        self.healthy = True

    async def ping(self) -> bool:
        """Whether Redis answers now (and remember it)."""
        try:
            await asyncio.wait_for(self.redis.ping(), 2.0)
        except REDIS_ERRORS:
            self.healthy = False
            return False
        if not self.healthy:
            logger.warning("redis is reachable again")
        self.healthy = True
        return True

    def failed(self, exc: BaseException) -> None:
        """Record that a Redis call failed."""
        if self.healthy:
            logger.error("redis is unreachable (%s)", type(exc).__name__)
        self.healthy = False

    async def watch_health(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Ping Redis every ``interval`` seconds until ``stop`` is set."""
        await run_every(interval, stop, self.ping)


@contextlib.asynccontextmanager
async def connected_cluster(settings: Settings, *, node_id: str) -> AsyncIterator[Cluster]:
    """A ``Cluster`` on ``settings.redis_url``, with its health watch; closed at the end."""
    assert settings.redis_url is not None
    redis = Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_connect_timeout=2.0,
        socket_timeout=10.0,
        health_check_interval=15,
        retry=redis_retry(),
    )
    cluster = Cluster(redis, settings, node_id=node_id)
    try:
        with contextlib.suppress(*REDIS_ERRORS):
            await cluster.queue.ensure_group()
        stop = asyncio.Event()
        watcher = asyncio.create_task(cluster.watch_health(stop), name="atoll-redis-health")
        try:
            yield cluster
        finally:
            stop.set()
            await settle_task(watcher, 5.0)
    finally:
        await redis.aclose()
