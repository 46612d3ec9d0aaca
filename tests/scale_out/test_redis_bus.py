"""The Redis building blocks of scale-out, against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from atoll.bus.memory import InMemoryEventBus
from atoll.bus.queue import CancelSignals, RunQueue, WorkerPresence
from atoll.bus.redis import (
    RedisCostBudget,
    RedisEventBus,
    RedisEventRelay,
    RedisFailureCounter,
    RedisRateLimiter,
    RedisRunSlots,
    user_stream,
)
from atoll.errors import RunLimitError
from atoll.ratelimit import CostBudget, LocalCostBudget
from atoll.runtime.events import EventRecorder, EventType, RunEmitter, RunEvent

from redis_server import redis_server
from support import until

pytestmark = [pytest.mark.scale_out, pytest.mark.integration]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as server:
        yield server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def relay(redis: Redis) -> AsyncIterator[RedisEventRelay]:
    node = RedisEventRelay(redis, InMemoryEventBus(), node_id="node-a", block_ms=500)
    node.start()
    yield node
    await node.aclose()


def event(user: str, run: str, seq: int) -> RunEvent:
    return RunEvent.build(
        type=EventType.AGENT_THINKING, run_id=run, thread_id="thr_t", user_id=user, seq=seq,
        agent="assistant", parent_agent=None, data={"text": f"{run}#{seq}", "step": seq},
    )  # fmt: skip


async def test_each_user_receives_only_their_events_in_order(
    redis: Redis, relay: RedisEventRelay
) -> None:
    bus = RedisEventBus(redis)
    ada, bob = await relay.subscribe("usr_ada"), await relay.subscribe("usr_bob")
    for seq in range(1, 6):
        await bus.publish(event("usr_ada", "run_a", seq))
        await bus.publish(event("usr_bob", "run_b", seq))
    got_ada = [await asyncio.wait_for(ada.get(), 5) for _ in range(5)]
    got_bob = [await asyncio.wait_for(bob.get(), 5) for _ in range(5)]
    assert [(e.user_id, e.run_id, e.seq) for e in got_ada] == [("usr_ada", "run_a", s)
                                                                 for s in range(1, 6)]  # fmt: skip
    assert {e.user_id for e in got_bob} == {"usr_bob"}
    assert got_ada[2].data == {"text": "run_a#3", "step": 3}
    assert ada.drain() == [] and bob.drain() == []


async def test_a_subscription_sees_events_from_when_it_started_and_across_clients(
    redis: Redis, redis_url: str, relay: RedisEventRelay
) -> None:
    producer = RedisEventBus(Redis.from_url(redis_url))  # another node or worker
    await producer.publish(event("usr_x", "run_old", 1))
    first, second = await relay.subscribe("usr_x"), await relay.subscribe("usr_x")
    await producer.publish(event("usr_x", "run_new", 1))
    assert (await asyncio.wait_for(first.get(), 5)).run_id == "run_new"
    assert (await asyncio.wait_for(second.get(), 5)).run_id == "run_new"
    await first.aclose()
    await second.aclose()
    late = await relay.subscribe("usr_x")  # followed again, from now on
    await producer.publish(event("usr_x", "run_later", 1))
    assert (await asyncio.wait_for(late.get(), 5)).run_id == "run_later"


async def test_streams_are_trimmed_by_the_retention_period(redis: Redis) -> None:
    bus = RedisEventBus(redis, retention=1.0)
    for seq in range(1, 50):
        await bus.publish(event("usr_trim", "run_t", seq))
    assert 0 < await redis.pttl(user_stream("usr_trim")) <= 1000
    await asyncio.sleep(1.2)
    await bus.publish(event("usr_trim", "run_t", 50))
    assert await redis.xlen(user_stream("usr_trim")) < 50


async def test_the_runtime_logs_then_publishes_through_redis(
    redis: Redis, relay: RedisEventRelay
) -> None:
    from atoll.bus.memory import InMemoryRunEventLog

    log = InMemoryRunEventLog()
    subscription = await relay.subscribe("usr_rt")
    emitter = RunEmitter(EventRecorder(log, RedisEventBus(redis)), user_id="usr_rt",
                         run_id="run_rt", thread_id="thr_rt", message_id="msg_rt")  # fmt: skip
    agent = emitter.for_agent("assistant", None)
    await agent.thinking("hmm")
    await agent.delta("Hello")
    live = [await asyncio.wait_for(subscription.get(), 5) for _ in range(2)]
    logged = await log.read("run_rt", user_id="usr_rt")
    assert [e.payload for e in live] == [e.payload for e in logged]


async def test_rate_limit_is_shared_by_every_node(redis: Redis, redis_url: str) -> None:
    node_a = RedisRateLimiter(redis, 3, 60.0, prefix="messages")
    other = Redis.from_url(redis_url)
    node_b = RedisRateLimiter(other, 3, 60.0, prefix="messages")
    assert await node_a.hit("usr_1") is None
    assert await node_b.hit("usr_1") is None
    assert await node_a.hit("usr_1") is None
    retry = await node_b.hit("usr_1")  # the 4th hit, on another node: refused
    assert retry is not None
    assert 0 < retry <= 20.0
    assert await node_b.hit("usr_2") is None  # another user has their own budget
    await other.aclose()


async def test_run_slots_hold_across_workers_and_expire_with_a_dead_holder(
    redis: Redis, redis_url: str
) -> None:
    other = Redis.from_url(redis_url)
    worker_a = RedisRunSlots(redis, 2, lease=1.0)
    worker_b = RedisRunSlots(other, 2, lease=1.0)
    await worker_a.try_acquire("usr_s", "run_1")
    await worker_b.try_acquire("usr_s", "run_2")
    with pytest.raises(RunLimitError):
        await worker_b.try_acquire("usr_s", "run_3")
    await worker_b.try_acquire("usr_other", "run_9")  # per user
    waiting = asyncio.create_task(worker_b.acquire("usr_s", "run_3"))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await worker_a.release("usr_s", "run_1")
    await asyncio.wait_for(waiting, 5)
    # worker_b "dies": stops renewing; its leases lapse and free the user's slots
    await asyncio.sleep(1.2)
    await worker_a.try_acquire("usr_s", "run_4")
    await worker_a.try_acquire("usr_s", "run_5")
    for _ in range(8):  # a live holder renews, and keeps its slots past the lease
        await asyncio.sleep(0.2)  # (renewed well within the lease, even on a busy machine)
        await worker_a.renew()
    with pytest.raises(RunLimitError):
        await worker_a.try_acquire("usr_s", "run_6")
    await other.aclose()


async def test_login_failures_are_reserved_atomically_across_nodes(
    redis: Redis, redis_url: str
) -> None:
    other = Redis.from_url(redis_url)
    node_a = RedisFailureCounter(redis, 60.0, prefix="login")
    node_b = RedisFailureCounter(other, 60.0, prefix="login")
    limits = {"pair:1.2.3.4:a@example.com": 10, "address:1.2.3.4": 15}
    burst = await asyncio.gather(
        *((node_a if n % 2 else node_b).reserve(limits) for n in range(100))
    )
    granted = [r.token for r in burst if r.token is not None]
    assert len(granted) == 10  # reserved before the work: no check-then-act gap
    assert all(59 < r.retry_after <= 60 for r in burst if r.token is None)
    # Another email from the same address still has room under the address key only.
    other_email = {"pair:1.2.3.4:b@example.com": 10, "address:1.2.3.4": 15}
    assert len([r for r in [await node_a.reserve(other_email) for _ in range(8)] if r.token]) == 5
    # A released reservation (a success) gives its place back; reset clears a key.
    await node_b.release(limits, granted[0])
    assert (await node_a.reserve(limits)).token is not None
    await node_b.reset("pair:1.2.3.4:a@example.com")
    await node_b.reset("address:1.2.3.4")
    assert (await node_a.reserve(limits)).token is not None
    await other.aclose()


async def test_the_queue_delivers_each_entry_to_one_worker_until_acknowledged(
    redis: Redis,
) -> None:
    queue = RunQueue(redis)
    await queue.ensure_group()
    await queue.ensure_group()  # idempotent
    for n in range(4):
        await queue.put(f"run_{n}", "usr_q")
    first = await queue.take("worker-1", 3, block_ms=100)
    second = await queue.take("worker-2", 3, block_ms=100)
    assert [e.run_id for e in first] == ["run_0", "run_1", "run_2"]
    assert [e.run_id for e in second] == ["run_3"]
    assert await queue.take("worker-2", 3, block_ms=50) == []
    await queue.ack(first[0].entry_id)
    pending = await queue.pending()
    assert {(p.consumer, p.entry_id) for p in pending} == {
        ("worker-1", first[1].entry_id), ("worker-1", first[2].entry_id),
        ("worker-2", second[0].entry_id),
    }  # fmt: skip
    taken = await queue.claim("sweeper-x", 0, [first[1].entry_id])
    assert [e.run_id for e in taken] == ["run_1"]
    assert await queue.claim("sweeper-y", 60_000, [first[1].entry_id]) == []  # one claimer wins


async def test_the_queue_recovers_when_redis_lost_its_data(redis: Redis) -> None:
    queue = RunQueue(redis)
    await queue.ensure_group()
    epoch = await queue.epoch()
    assert await queue.epoch() == epoch
    await redis.flushdb()  # what a restart without persistence looks like
    assert await queue.take("worker-1", 1, block_ms=50) == []  # recreates the group
    await queue.put("run_after", "usr_q")
    assert [e.run_id for e in await queue.take("worker-1", 1, block_ms=100)] == ["run_after"]
    assert await queue.epoch() != epoch


async def test_presence_and_cancel_signals(redis: Redis) -> None:
    presence = WorkerPresence(redis, timeout=1.0)
    await presence.beat("worker-1", "{}")
    await presence.beat("worker-2", "{}")
    assert await presence.alive(["worker-1", "worker-2", "worker-3"]) == {"worker-1", "worker-2"}
    await presence.leave("worker-2")
    assert await presence.alive(["worker-1", "worker-2"]) == {"worker-1"}
    await asyncio.sleep(1.1)
    assert await presence.alive(["worker-1"]) == set()

    signals = CancelSignals(redis, ttl=5.0)
    pubsub = redis.pubsub()
    await pubsub.subscribe("atoll:cancel")
    await signals.send("run_c", "user")
    assert await signals.requested(["run_c", "run_d"]) == {"run_c": "user"}
    received = []
    async with asyncio.timeout(5):
        async for message in pubsub.listen():
            if message["type"] == "message":
                received.append(message["data"])
                break
    assert received == [b"run_c"]
    await pubsub.aclose()


async def test_the_relay_follows_users_through_a_redis_outage() -> None:
    with redis_server() as server:
        redis = Redis.from_url(server.url, socket_connect_timeout=1)
        node = RedisEventRelay(redis, InMemoryEventBus(), node_id="node-x", block_ms=200)
        node.start()
        await asyncio.to_thread(server.stop)
        subscription = await node.subscribe("usr_out")  # no error while Redis is down
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start)
        publisher = Redis.from_url(server.url)
        await RedisEventBus(publisher).publish(event("usr_out", "run_o", 1))
        received = await asyncio.wait_for(subscription.get(), 15)
        assert (received.run_id, received.seq) == ("run_o", 1)
        await node.aclose()
        await publisher.aclose()
        await redis.aclose()


@pytest.fixture(params=["local", "redis"])
async def budget_of(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Any]:
    """Builds a ``CostBudget`` of each implementation: one contract, both pass it."""
    client = Redis.from_url(redis_url)
    await client.flushdb()

    def build(budget: float, period: float) -> CostBudget:
        if request.param == "local":
            return LocalCostBudget(budget, period)
        return RedisCostBudget(client, budget, period, prefix="test")

    yield build
    await client.aclose()


async def test_a_cost_budget_refuses_past_its_budget_per_key_and_refills(budget_of: Any) -> None:
    budget: CostBudget = budget_of(1.0, 60.0)
    await budget.charge("usr_a", 0.5)
    assert await budget.check("usr_a") is None  # half spent
    await budget.charge("usr_a", 0.6)
    wait = await budget.check("usr_a")
    assert wait is not None and 0 < wait <= 0.1 * 60 + 0.01  # 0.1 over: 6 s to refill it
    assert await budget.check("usr_b") is None  # another user's budget is their own

    quick: CostBudget = budget_of(0.1, 0.3)
    await quick.charge("usr_c", 0.2)  # twice the budget: over for about 0.3 s
    assert await quick.check("usr_c") is not None

    async def refilled() -> bool:
        return await quick.check("usr_c") is None

    await until(refilled, within=10, what="the budget refilled")
