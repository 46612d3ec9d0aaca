"""The scale-out run queue, worker presence and cancel signals, on Redis.

- ``RunQueue``: one stream (``atoll:runs``) read by the consumer group
  ``workers``; each worker is a consumer, so an entry is delivered to exactly one
  worker and stays in its pending list until acknowledged. The database stays
  the source of truth: a worker *claims* the run there (PENDING -> STARTING), so
  a duplicate entry is harmless.
- ``WorkerPresence``: each worker refreshes ``atoll:worker:<id>`` (expiring after
  the heartbeat timeout); a missing key means the worker is gone.
- ``CancelSignals``: a cancel is a flag (``atoll:cancel:<run_id>``, read by the
  worker at its heartbeat) plus a pub/sub message for the fast path.
- ``epoch``: a random token in ``atoll:epoch``; when it changes, Redis lost its
  data (a restart without persistence) and the sweeper re-queues queued runs.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

QUEUE_KEY = "atoll:runs"
GROUP = "workers"
CANCEL_CHANNEL = "atoll:cancel"
EPOCH_KEY = "atoll:epoch"


@dataclass(frozen=True, slots=True)
class QueuedRun:
    """One queue entry: a run to execute (the worker reads everything else from the database)."""

    entry_id: str
    run_id: str
    user_id: str

    @classmethod
    def from_entry(cls, entry_id: bytes | str, fields: dict[bytes, bytes]) -> QueuedRun:
        """Parse a stream entry."""
        return cls(_text(entry_id), fields[b"run"].decode(), fields[b"user"].decode())


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """An entry delivered to a consumer and not acknowledged yet."""

    entry_id: str
    consumer: str
    idle_ms: int


class RunQueue:
    """The run queue: a Redis Stream with one consumer group of workers."""

    def __init__(self, redis: Redis, *, key: str = QUEUE_KEY, group: str = GROUP) -> None:
        self._redis = redis
        self.key = key
        self.group = group

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group if missing."""
        try:
            await self._redis.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def put(self, run_id: str, user_id: str) -> str:
        """Queue a run; returns its entry id."""
        entry: Any = await self._redis.xadd(self.key, {"run": run_id, "user": user_id})
        return _text(entry)

    async def take(self, consumer: str, count: int, block_ms: int) -> list[QueuedRun]:
        """Up to ``count`` new entries for ``consumer`` (waits up to ``block_ms``)."""
        try:
            answer: Any = await self._redis.xreadgroup(
                self.group, consumer, {self.key: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()  # Redis lost its data: start again
            return []
        return [QueuedRun.from_entry(i, f) for _, entries in answer or () for i, f in entries]

    async def ack(self, *entry_ids: str) -> None:
        """Acknowledge and delete entries."""
        if entry_ids:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xack(self.key, self.group, *entry_ids)
                pipe.xdel(self.key, *entry_ids)
                await pipe.execute()

    async def pending(self, count: int = 1000) -> list[PendingEntry]:
        """Entries delivered and not acknowledged, oldest first."""
        try:
            rows: Any = await self._redis.xpending_range(
                self.key, self.group, min="-", max="+", count=count
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return []
        return [
            PendingEntry(
                entry_id=_text(row["message_id"]),
                consumer=_text(row["consumer"]),
                idle_ms=int(row["time_since_delivered"]),
            )
            for row in rows
        ]

    async def claim(self, consumer: str, min_idle_ms: int, entry_ids: list[str]) -> list[QueuedRun]:
        """Take over entries idle for at least ``min_idle_ms`` (one claimer wins each)."""
        if not entry_ids:
            return []
        ids: list[Any] = list(entry_ids)
        answer: Any = await self._redis.xclaim(
            self.key, self.group, consumer, min_idle_time=min_idle_ms, message_ids=ids
        )
        return [QueuedRun.from_entry(i, f) for i, f in answer or () if f]

    async def forget_consumer(self, consumer: str) -> None:
        """Remove a gone worker's consumer from the group (after its entries were claimed)."""
        try:
            await self._redis.xgroup_delconsumer(self.key, self.group, consumer)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise

    async def depth(self) -> int:
        """Entries in the stream (queued or being executed)."""
        return int(await self._redis.xlen(self.key))

    async def epoch(self) -> str:
        """The current data epoch (created when Redis has none)."""
        value = await self._redis.get(EPOCH_KEY)
        if value is None:
            await self._redis.set(EPOCH_KEY, secrets.token_hex(8), nx=True)
            value = await self._redis.get(EPOCH_KEY)
        return _text(value)


def worker_key(worker_id: str) -> str:
    """The Redis key of a worker's heartbeat."""
    return f"atoll:worker:{worker_id}"


class WorkerPresence:
    """Workers' heartbeats: a key per worker that expires with the heartbeat timeout."""

    def __init__(self, redis: Redis, *, timeout: float) -> None:
        self._redis = redis
        self.timeout_ms = max(1000, int(timeout * 1000))

    async def beat(self, worker_id: str, info: str) -> None:
        """Say ``worker_id`` is alive for another heartbeat timeout."""
        await self._redis.set(worker_key(worker_id), info, px=self.timeout_ms)

    async def alive(self, worker_ids: Iterable[str]) -> set[str]:
        """The workers among ``worker_ids`` whose heartbeat has not expired."""
        ids = list(dict.fromkeys(worker_ids))
        if not ids:
            return set()
        values: Any = await self._redis.mget([worker_key(w) for w in ids])
        return {w for w, value in zip(ids, values, strict=True) if value is not None}

    async def leave(self, worker_id: str) -> None:
        """Remove the heartbeat (graceful stop)."""
        await self._redis.delete(worker_key(worker_id))


def cancel_key(run_id: str) -> str:
    """The Redis key of a run's cancel request."""
    return f"atoll:cancel:{run_id}"


class CancelSignals:
    """Cancel requests for runs executing on some worker."""

    def __init__(self, redis: Redis, *, ttl: float) -> None:
        self._redis = redis
        self._ttl_ms = max(1000, int(ttl * 1000))

    async def send(self, run_id: str, reason: str) -> None:
        """Ask whichever worker runs ``run_id`` to cancel it."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(cancel_key(run_id), reason, px=self._ttl_ms)
            pipe.publish(CANCEL_CHANNEL, run_id)
            await pipe.execute()

    async def requested(self, run_ids: list[str]) -> dict[str, str]:
        """The cancel reasons of those of ``run_ids`` that were asked to stop."""
        if not run_ids:
            return {}
        values: Any = await self._redis.mget([cancel_key(r) for r in run_ids])
        return {r: _text(v) for r, v in zip(run_ids, values, strict=True) if v is not None}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
