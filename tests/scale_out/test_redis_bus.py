"""The Redis Streams event bus against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from atoll.bus.redis import RedisEventBus, SubscriptionClosedError, user_stream
from atoll.runtime.events import EventRecorder, EventType, RunEmitter, RunEvent

from redis_server import redis_server

pytestmark = [pytest.mark.scale_out, pytest.mark.integration]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


def event(user: str, run: str, seq: int) -> RunEvent:
    return RunEvent.build(
        type=EventType.AGENT_THINKING, run_id=run, thread_id="thr_t", user_id=user, seq=seq,
        agent="assistant", parent_agent=None, data={"text": f"{run}#{seq}", "step": seq},
    )  # fmt: skip


async def test_each_user_receives_only_their_events_in_order(redis: Redis) -> None:
    bus = RedisEventBus(redis, block_ms=100)
    ada, bob = bus.subscribe("usr_ada"), bus.subscribe("usr_bob")
    await ada.start()
    await bob.start()
    for seq in range(1, 6):
        await bus.publish(event("usr_ada", "run_a", seq))
        await bus.publish(event("usr_bob", "run_b", seq))
    got_ada = [await asyncio.wait_for(ada.get(), 5) for _ in range(5)]
    got_bob = [await asyncio.wait_for(bob.get(), 5) for _ in range(5)]
    assert [(e.user_id, e.run_id, e.seq) for e in got_ada] == [("usr_ada", "run_a", s)
                                                                 for s in range(1, 6)]  # fmt: skip
    assert {e.user_id for e in got_bob} == {"usr_bob"}
    assert got_ada[2].data == {"text": "run_a#3", "step": 3}


async def test_a_subscription_sees_events_from_when_it_started_and_across_clients(
    redis: Redis, redis_url: str
) -> None:
    producer = RedisEventBus(Redis.from_url(redis_url))  # another node or worker
    await producer.publish(event("usr_x", "run_old", 1))
    consumer = RedisEventBus(redis, block_ms=100)
    first, second = consumer.subscribe("usr_x"), consumer.subscribe("usr_x")
    await first.start()
    await second.start()
    await producer.publish(event("usr_x", "run_new", 1))
    assert (await asyncio.wait_for(first.get(), 5)).run_id == "run_new"
    assert (await asyncio.wait_for(second.get(), 5)).run_id == "run_new"
    await first.aclose()
    with pytest.raises(SubscriptionClosedError):
        await first.get()


async def test_streams_are_trimmed(redis: Redis) -> None:
    bus = RedisEventBus(redis, max_len=10)
    for seq in range(1, 500):
        await bus.publish(event("usr_trim", "run_t", seq))
    assert await redis.xlen(user_stream("usr_trim")) < 200


async def test_the_runtime_logs_then_publishes_through_redis(redis: Redis) -> None:
    from atoll.bus.memory import InMemoryRunEventLog

    log, bus = InMemoryRunEventLog(), RedisEventBus(redis, block_ms=100)
    subscription = bus.subscribe("usr_rt")
    await subscription.start()
    emitter = RunEmitter(EventRecorder(log, bus), user_id="usr_rt", run_id="run_rt",
                         thread_id="thr_rt", message_id="msg_rt")  # fmt: skip
    agent = emitter.for_agent("assistant", None)
    await agent.thinking("hmm")
    await agent.delta("Hello")
    live = [await asyncio.wait_for(subscription.get(), 5) for _ in range(2)]
    logged = await log.read("run_rt", user_id="usr_rt")
    assert [e.payload for e in live] == [e.payload for e in logged]


async def test_rate_limit_is_shared_by_every_node(redis: Redis, redis_url: str) -> None:
    from atoll.bus.redis import RedisRateLimiter

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
