"""Scale-out on Redis: event delivery, and the limits every node must share.

Events: ``RedisEventBus.publish`` appends an event's wire bytes to its owner's
stream ``atoll:events:user:<user_id>`` (entries older than the retention period
are trimmed on every append, and an idle user's stream expires). On each API
node one ``RedisEventRelay`` reads, in a single blocking ``XREAD``, the streams
of the users who have a socket on that node, and hands their events to the
node's in-process bus: a node delivers a user's events to that user's sockets
only, whichever worker produced them. Durability and replay stay with the run
event log (the database); the stream is the live path.

Limits: ``RedisRateLimiter`` (GCRA), ``RedisRunSlots`` (per-user concurrency as
leases that expire with a dead worker) and ``RedisFailureCounter`` (failed
logins) keep their state in Redis and compute on Redis's clock, so they hold
across every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from atoll.aio import settle_task
from atoll.bus.memory import InMemoryEventBus, MemorySubscription, Notice
from atoll.errors import UnavailableError
from atoll.ratelimit import Reservation
from atoll.runtime.events import RunEvent
from atoll.runtime.limits import run_limit_error

logger = logging.getLogger(__name__)

STREAM_PREFIX = "atoll:events:user:"


def user_stream(user_id: str) -> str:
    """The Redis key of ``user_id``'s event stream."""
    return f"{STREAM_PREFIX}{user_id}"


class RedisEventBus:
    """The publishing side of ``RunEventBus`` on Redis Streams (workers and nodes).

    Events published in the same event-loop turn (typically those logged by one
    group commit) go to Redis in one pipeline; batches are sent in order.
    """

    def __init__(self, redis: Redis, *, retention: float = 24 * 3600.0) -> None:
        self._redis = redis
        self.retention_ms = max(1000, int(retention * 1000))
        self._pending: list[RunEvent] = []
        self._batch: asyncio.Future[None] | None = None
        self._previous: asyncio.Future[None] | None = None

    async def publish(self, event: RunEvent) -> None:
        """Append ``event`` to its owner's stream (trimming entries past the retention)."""
        self._pending.append(event)
        if self._batch is None:
            self._batch = asyncio.ensure_future(self._send(self._previous))
            self._previous = self._batch
        await asyncio.shield(self._batch)

    async def _send(self, previous: asyncio.Future[None] | None) -> None:
        await asyncio.sleep(0)  # let the rest of this turn's events join
        events, self._pending, self._batch = self._pending, [], None
        if previous is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(previous)  # keep batches in order
        minid = _minid(self.retention_ms)
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(user_stream(event.user_id), {"p": event.payload}, minid=minid,
                          approximate=True)  # fmt: skip
            for key in {user_stream(event.user_id) for event in events}:
                pipe.pexpire(key, self.retention_ms)
            await pipe.execute()

    async def notify(self, notice: Notice) -> None:
        """Append ``notice`` to its user's stream (field ``n``: the frame as JSON)."""
        key = user_stream(notice.user_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {"n": orjson.dumps(notice.frame)}, minid=_minid(self.retention_ms),
                      approximate=True)  # fmt: skip
            pipe.pexpire(key, self.retention_ms)
            await pipe.execute()


def jittered(delay: float) -> float:
    """``delay`` spread over 0.5x-1.5x, so retrying processes do not move in step."""
    return delay * (0.5 + random.random())  # noqa: S311 - jitter, not security


def _minid(retention_ms: int) -> str:
    """The oldest stream id to keep (stream ids start with their millisecond timestamp)."""
    return f"{max(0, int(time.time() * 1000) - retention_ms)}-0"


class RedisEventRelay:
    """Feeds this node's in-process bus with the Redis events of its connected users.

    ``subscribe`` returns an ordinary in-process subscription and makes sure the
    user's stream is followed from that moment on. One task reads every
    followed stream with a single blocking ``XREAD``; following a new user wakes
    it through the node's own wake-up stream. Users without local subscribers
    are dropped from the read. Redis outages are retried with backoff.
    """

    def __init__(
        self,
        redis: Redis,
        local: InMemoryEventBus,
        *,
        node_id: str,
        block_ms: int = 1_000,
        batch: int = 1_000,
    ) -> None:
        self._redis = redis
        self._local = local
        self._wake_key = f"atoll:wake:{node_id}"
        self._block_ms = block_ms
        self._batch = batch
        self._positions: dict[str, str] = {}
        self._wake_position = "0-0"
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = False

    async def subscribe(self, user_id: str) -> MemorySubscription:
        """A subscription to ``user_id``'s events, whichever process publishes them."""
        subscription = self._local.subscribe(user_id)
        if user_id not in self._positions:
            try:
                newest: Any = await self._redis.xrevrange(user_stream(user_id), count=1)
                self._positions[user_id] = newest[0][0].decode() if newest else "0-0"
                await self._redis.xadd(self._wake_key, {"u": user_id}, maxlen=100)
            except (RedisError, OSError):
                # Redis is down: follow from this moment (stream ids are millisecond
                # timestamps); the reader picks the user up when Redis is back.
                self._positions.setdefault(user_id, f"{int(time.time() * 1000)}-0")
            except BaseException:
                await subscription.aclose()
                raise
        return subscription

    def start(self) -> None:
        """Start reading (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._read_forever(), name="atoll-event-relay")

    async def aclose(self) -> None:
        """Stop reading (within one block period)."""
        self._closing = True
        if self._task is not None:
            await settle_task(self._task, self._block_ms / 1000 + 2)
            self._task = None
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self._wake_key)

    async def _read_forever(self) -> None:
        backoff = 0.2
        outage = False
        while not self._closing:
            try:
                await self._read_once()
                backoff = 0.2
                self.connected = True
                if outage:  # what was published meanwhile may be lost: readers re-read the log
                    outage = False
                    logger.warning("event relay: redis is back; resyncing subscribers")
                    self._local.resync()
            except (RedisError, OSError) as exc:
                self.connected = False
                outage = True
                logger.warning("event relay: redis unavailable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(jittered(backoff))
                backoff = min(backoff * 2, 5.0)
            except Exception:
                logger.exception("event relay failed; retrying")
                await asyncio.sleep(1.0)

    async def _read_once(self) -> None:
        for user_id in [u for u in self._positions if not self._local.subscriber_count(u)]:
            del self._positions[user_id]
        streams: dict[Any, Any] = {self._wake_key: self._wake_position}
        streams.update({user_stream(u): position for u, position in self._positions.items()})
        answer: Any = await self._redis.xread(streams, count=self._batch, block=self._block_ms)
        for raw_key, entries in answer or ():
            key = raw_key.decode()
            if key == self._wake_key:
                self._wake_position = entries[-1][0].decode()
                continue
            user_id = key.removeprefix(STREAM_PREFIX)
            if user_id not in self._positions:
                continue
            for entry_id, fields in entries:
                self._positions[user_id] = entry_id.decode()
                if b"n" in fields:
                    self._notice(user_id, fields[b"n"], entry_id)
                    continue
                try:
                    event = RunEvent.from_payload(fields[b"p"], user_id=user_id)
                except (KeyError, ValueError):
                    logger.error("event relay: malformed entry %s in %s", entry_id, key)
                    continue
                await self._local.publish(event)

    def _notice(self, user_id: str, raw: bytes, entry_id: bytes) -> None:
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            frame = None
        if not isinstance(frame, dict):
            logger.error("event relay: malformed notice %s of %s", entry_id, user_id)
            return
        self._local.notify(Notice(user_id, frame))


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


SHARED_LIMITS_DOWN = "the shared limits are unavailable (redis); try again shortly"

_CHARGE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
tat = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], tat, 'PX', math.ceil(tat - now) + 1)
return 1
"""

_OVER = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
return math.floor(tat - now - tonumber(ARGV[1]))
"""


class RedisCostBudget:
    """``CostBudget`` shared by every node and worker: GCRA by cost, on Redis's clock.

    Workers charge what their runs cost; API nodes check before storing a message.
    """

    def __init__(self, redis: Redis, budget: float, period: float, *, prefix: str) -> None:
        if budget <= 0 or period <= 0:
            raise ValueError("budget and period must be positive")
        self.budget = budget
        self._period_ms = round(period * 1000)
        self._prefix = prefix
        self._charge = redis.register_script(_CHARGE)
        self._over = redis.register_script(_OVER)

    def _key(self, key: str) -> str:
        return f"atoll:cost:{self._prefix}:{key}"

    async def charge(self, key: str, cost: float) -> None:
        """Add ``cost`` to what ``key`` has spent."""
        advance_ms = max(cost, 0.0) * self._period_ms / self.budget
        await self._charge(keys=[self._key(key)], args=[round(advance_ms, 3)])

    async def check(self, key: str) -> float | None:
        """None if ``key`` is within its budget, else the seconds until it is
        (``UnavailableError`` while Redis does not answer)."""
        try:
            over_ms = int(await self._over(keys=[self._key(key)], args=[self._period_ms]))
        except (RedisError, OSError):
            raise UnavailableError(SHARED_LIMITS_DOWN) from None
        return over_ms / 1000 if over_ms > 0 else None


class RedisRateLimiter:
    """``RateLimiter`` shared by every node: GCRA in one Lua script, on Redis's clock."""

    def __init__(
        self, redis: Redis, limit: int, period: float, *, prefix: str, fail_open: bool = False
    ) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self._redis = redis
        self.fail_open = fail_open
        """Allow (instead of raising) while Redis is unreachable."""
        self.limit = limit
        self._period_ms = round(period * 1000)
        self._prefix = prefix
        self._script = redis.register_script(_GCRA)

    async def hit(self, key: str, limit: int | None = None) -> float | None:
        """Record one hit for ``key``; None if allowed, else the retry-after in seconds."""
        interval_ms = max(1, round(self._period_ms / (limit or self.limit)))
        try:
            wait_ms = await self._script(
                keys=[f"atoll:rate:{self._prefix}:{key}"], args=[interval_ms, self._period_ms]
            )
        except (RedisError, OSError):
            if not self.fail_open:
                raise UnavailableError(SHARED_LIMITS_DOWN) from None
            logger.warning("rate limit %s not checked: redis is unreachable", self._prefix)
            return None
        return None if int(wait_ms) < 0 else int(wait_ms) / 1000


_SLOT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local limit = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], lease)
  return 1
end
return 0
"""

_RENEW = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', key, lease)
end
return #KEYS
"""


def slots_key(user_id: str) -> str:
    """The Redis key of ``user_id``'s run slots."""
    return f"atoll:slots:{user_id}"


class RedisRunSlots:
    """``RunSlots`` for the whole cluster: each held slot is a lease named by its run.

    A slot is a member of the user's sorted set, scored with its expiry on Redis's
    clock. The holder renews its leases (``renew``, from the worker's heartbeat);
    a dead worker's slots expire after ``lease`` seconds. Waiting polls with a
    short jittered backoff, so order among a user's waiting runs is approximate.
    """

    def __init__(self, redis: Redis, limit: int, *, lease: float, poll: float = 0.05) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._redis = redis
        self.limit = limit
        self._lease_ms = max(1000, int(lease * 1000))
        self._poll = poll
        self._take = redis.register_script(_SLOT)
        self._renew = redis.register_script(_RENEW)
        self.held: dict[str, str] = {}
        """run_id -> user_id of the slots this process holds."""

    async def _try(self, user_id: str, run_id: str, limit: int) -> bool:
        taken = await self._take(keys=[slots_key(user_id)], args=[run_id, limit, self._lease_ms])
        if int(taken):
            self.held[run_id] = user_id
            return True
        return False

    async def try_acquire(self, user_id: str, run_id: str, limit: int | None = None) -> None:
        """Take a slot now or raise ``RunLimitError``."""
        if not await self._try(user_id, run_id, limit or self.limit):
            raise run_limit_error(limit or self.limit)

    async def acquire(self, user_id: str, run_id: str, limit: int | None = None) -> None:
        """Take a slot, polling until one is free anywhere in the cluster.

        While Redis is unreachable the run keeps waiting (the run timeout bounds it).
        """
        delay = self._poll
        while True:
            try:
                if await self._try(user_id, run_id, limit or self.limit):
                    return
            except (RedisError, OSError):
                delay = max(delay, 0.5)
            await asyncio.sleep(jittered(delay))
            delay = min(delay * 1.5, 0.5)

    async def release(self, user_id: str, run_id: str) -> None:
        """Give the slot back (if Redis is unreachable, the lease simply expires)."""
        self.held.pop(run_id, None)
        try:
            await self._redis.zrem(slots_key(user_id), run_id)
        except (RedisError, OSError):
            logger.warning("run slot of %s not released: redis is unreachable", run_id)

    async def renew(self) -> None:
        """Extend the leases of every slot held here."""
        held = list(self.held.items())
        if held:
            await self._renew(
                keys=[slots_key(user) for _, user in held],
                args=[self._lease_ms, *(run for run, _ in held)],
            )


_RESERVE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local window = tonumber(ARGV[1])
local wait = -1
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= tonumber(ARGV[i + 2]) then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now)
  end
end
if wait >= 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[2])
  redis.call('PEXPIRE', key, window)
end
return -1
"""


class RedisFailureCounter:
    """``FailureCounter`` shared by every node: a sorted set per key, on Redis's clock.

    A reservation checks and takes its places under all its keys in one Lua
    script, so it is atomic across nodes.
    """

    def __init__(self, redis: Redis, period: float, *, prefix: str) -> None:
        self._redis = redis
        self._window_ms = max(1, int(period * 1000))
        self._prefix = prefix
        self._reserve = redis.register_script(_RESERVE)

    def _key(self, key: str) -> str:
        return f"atoll:failures:{self._prefix}:{key}"

    async def reserve(self, limits: Mapping[str, int]) -> Reservation:
        """Take one place under each key (``key -> limit``), all or none."""
        token = secrets.token_hex(8)
        wait_ms = await self._reserve(
            keys=[self._key(key) for key in limits],
            args=[self._window_ms, token, *limits.values()],
        )
        if int(wait_ms) < 0:
            return Reservation(token)
        return Reservation(None, math.ceil(int(wait_ms)) / 1000)

    async def release(self, keys: Iterable[str], token: str) -> None:
        """Give back the places ``token`` took under ``keys``."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zrem(self._key(key), token)
            await pipe.execute()

    async def reset(self, key: str) -> None:
        """Forget every attempt counted under ``key``."""
        await self._redis.delete(self._key(key))


REVOKED_CHANNEL = "atoll:sessions:revoked"


class RedisSessionRevocations:
    """Revoked sessions, announced to every process on a pub/sub channel.

    ``publish`` announces to every API node (the ``RevocationNotifier`` of
    ``AuthService`` calls it); ``listen`` runs in every API node and calls
    ``revoked(session_id, reason)`` for each announcement (a message is the session id,
    a space and the reason; a bare id, from an older node, has the reason ``""``). It
    calls ``subscribed()`` once it receives announcements, and ``lost()`` as soon as
    it may not (an outage, a dropped connection): pub/sub keeps nothing for a
    subscriber that was away, so the session cache must not be trusted meanwhile.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def publish(self, session_id: str, reason: str) -> None:
        """Announce that ``session_id`` was revoked, for ``reason``."""
        await self._redis.publish(REVOKED_CHANNEL, f"{session_id} {reason}")

    async def listen(
        self,
        stop: asyncio.Event,
        *,
        revoked: Callable[[str, str], Awaitable[None]],
        subscribed: Callable[[], None],
        lost: Callable[[], None],
    ) -> None:
        """Deliver announcements until ``stop`` is set (outages retried with backoff)."""
        backoff = 0.2
        while not stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(REVOKED_CHANNEL)
                subscribed()
                backoff = 0.2
                while not stop.is_set():
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        text = data.decode() if isinstance(data, bytes) else str(data)
                        session_id, _, reason = text.partition(" ")
                        await revoked(session_id, reason)
            except (TimeoutError, RedisError, OSError) as exc:
                lost()
                logger.warning("session revocations: redis unavailable (%s)", type(exc).__name__)
                await asyncio.sleep(jittered(backoff))
                backoff = min(backoff * 2, 5.0)
            finally:
                lost()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
