"""Run event delivery over Redis Streams: one stream per user.

``publish`` appends the event's wire bytes to ``atoll:events:user:<user_id>``
(trimmed approximately to ``max_len`` entries); a subscription reads that user's
stream from the moment it was opened, so a node delivers a user's events to that
user's sockets only, whichever process produced them. Durability and replay stay
with the run event log (the database): the stream is the live path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from atoll.runtime.events import RunEvent

STREAM_PREFIX = "atoll:events:user:"


def user_stream(user_id: str) -> str:
    """The Redis key of ``user_id``'s event stream."""
    return f"{STREAM_PREFIX}{user_id}"


class SubscriptionClosedError(Exception):
    """``get`` was called on a closed subscription."""


class RedisSubscription:
    """One subscriber's position in one user's stream."""

    def __init__(self, redis: Redis, user_id: str, *, block_ms: int, batch: int) -> None:
        self._redis = redis
        self.user_id = user_id
        self._key = user_stream(user_id)
        self._block_ms = block_ms
        self._batch = batch
        self._last_id: str | None = None
        self._buffer: deque[RunEvent] = deque()
        self.closed = False

    async def start(self) -> None:
        """Fix the position: only events published from now on are delivered."""
        newest: Any = await self._redis.xrevrange(self._key, count=1)
        self._last_id = newest[0][0].decode() if newest else "0-0"

    async def get(self) -> RunEvent:
        """The next event of this user (waits for one)."""
        if self._last_id is None:
            await self.start()
        while not self._buffer:
            if self.closed:
                raise SubscriptionClosedError(self.user_id)
            position: str = self._last_id or "0-0"
            answer: Any = await self._redis.xread(
                {self._key: position}, count=self._batch, block=self._block_ms
            )
            for _stream, entries in answer or ():
                for entry_id, fields in entries:
                    self._last_id = entry_id.decode()
                    self._buffer.append(RunEvent.from_payload(fields[b"p"], user_id=self.user_id))
        return self._buffer.popleft()

    async def __aiter__(self) -> AsyncIterator[RunEvent]:
        while not self.closed:
            yield await self.get()

    async def aclose(self) -> None:
        """Stop reading."""
        self.closed = True


class RedisEventBus:
    """``RunEventBus`` on Redis Streams, shared by every node and worker."""

    def __init__(
        self, redis: Redis, *, max_len: int = 10_000, block_ms: int = 1_000, batch: int = 100
    ) -> None:
        self._redis = redis
        self.max_len = max_len
        self._block_ms = block_ms
        self._batch = batch

    async def publish(self, event: RunEvent) -> None:
        """Append ``event`` to its owner's stream."""
        await self._redis.xadd(
            user_stream(event.user_id),
            {"p": event.payload},
            maxlen=self.max_len,
            approximate=True,
        )

    def subscribe(self, user_id: str) -> RedisSubscription:
        """A subscription to ``user_id``'s events from the first ``get`` on.

        Call ``await subscription.start()`` to fix the position right away.
        """
        return RedisSubscription(self._redis, user_id, block_ms=self._block_ms, batch=self._batch)


_GCRA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat + interval - period
if allow_at > now then return allow_at - now end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil(tat + interval - now) + 1)
return -1
"""


class RedisRateLimiter:
    """``RateLimiter`` shared by every node: GCRA in one Lua script, on Redis's clock."""

    def __init__(self, redis: Redis, limit: int, period: float, *, prefix: str) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self._redis = redis
        self._interval_ms = max(1, round(period * 1000 / limit))
        self._period_ms = round(period * 1000)
        self._prefix = prefix
        self._script = redis.register_script(_GCRA)

    async def hit(self, key: str) -> float | None:
        """Record one hit for ``key``; None if allowed, else the retry-after in seconds."""
        wait_ms = await self._script(
            keys=[f"atoll:rate:{self._prefix}:{key}"],
            args=[self._interval_ms, self._period_ms],
        )
        return None if int(wait_ms) < 0 else int(wait_ms) / 1000
