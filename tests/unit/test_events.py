"""Run events: envelope, gapless seq, log-before-publish, owner-only delivery, closure."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from atoll.bus.memory import InMemoryEventBus, InMemoryRunEventLog, SubscriptionOverflowError
from atoll.errors import RunClosedError
from atoll.runtime.events import (
    MAX_QUEUED_DELTA,
    EventRecorder,
    EventType,
    RunEmitter,
    RunEvent,
)

pytestmark = pytest.mark.unit


def emitter_for(recorder: EventRecorder, user: str = "usr_a", run: str = "run_a") -> RunEmitter:
    return RunEmitter(recorder, user_id=user, run_id=run, thread_id="thr_a", message_id="msg_a")


async def test_envelope_and_gapless_seq() -> None:
    log, bus = InMemoryRunEventLog(), InMemoryEventBus()
    emitter = emitter_for(EventRecorder(log, bus))
    agent = emitter.for_agent("assistant", None)
    await agent.emit(EventType.AGENT_STARTED, {"input_message_id": "msg_in"})
    await agent.thinking("hmm")
    await agent.delta("Hello")
    await agent.delta("")  # empty deltas are not events
    await agent.emit(EventType.AGENT_COMPLETED, {"message": {"content": "Hello"}})
    events = await log.read("run_a", user_id="usr_a")
    assert [e.seq for e in events] == [1, 2, 3, 4]
    wire = orjson.loads(events[2].payload)
    assert set(wire) == {
        "type",
        "run_id",
        "thread_id",
        "seq",
        "ts",
        "agent",
        "parent_agent",
        "data",
    }
    assert wire["data"] == {"message_id": "msg_a", "delta": "Hello"}
    assert wire["ts"].endswith("Z")
    assert "user_id" not in wire
    assert events[1].data == {"text": "hmm", "step": 1}
    assert RunEvent.from_payload(events[2].payload, user_id="usr_a") == events[2]
    assert (await log.read("run_a", user_id="usr_a", after=2))[0].seq == 3


async def test_no_event_after_terminal() -> None:
    log, bus = InMemoryRunEventLog(), InMemoryEventBus()
    emitter = emitter_for(EventRecorder(log, bus))
    top = emitter.for_agent("supervisor", None)
    sub = emitter.for_agent("assistant", "supervisor")
    await sub.emit(EventType.AGENT_COMPLETED, {})  # a sub-agent's completion does not end the run
    assert not emitter.closed
    await top.emit(EventType.AGENT_ERROR, {"state": "failed"})
    assert emitter.closed
    with pytest.raises(RunClosedError):
        await top.emit(EventType.AGENT_COMPLETED, {})
    assert [e.type for e in await log.read("run_a", user_id="usr_a")] == [
        EventType.AGENT_COMPLETED,
        EventType.AGENT_ERROR,
    ]


async def test_sub_agent_does_not_stream_answer() -> None:
    log, bus = InMemoryRunEventLog(), InMemoryEventBus()
    emitter = emitter_for(EventRecorder(log, bus))
    await emitter.for_agent("assistant", "supervisor").delta("internal")
    assert await log.read("run_a", user_id="usr_a") == []


async def test_bus_delivers_only_to_owner_and_log_reads_only_for_owner() -> None:
    log, bus = InMemoryRunEventLog(), InMemoryEventBus()
    recorder = EventRecorder(log, bus)
    sub_a, sub_b = bus.subscribe("usr_a"), bus.subscribe("usr_b")
    await emitter_for(recorder, "usr_a", "run_a").for_agent("x", None).thinking("a's")
    await emitter_for(recorder, "usr_b", "run_b").for_agent("x", None).thinking("b's")
    got_a = await asyncio.wait_for(sub_a.get(), 1)
    got_b = await asyncio.wait_for(sub_b.get(), 1)
    assert (got_a.user_id, got_a.run_id) == ("usr_a", "run_a")
    assert (got_b.user_id, got_b.run_id) == ("usr_b", "run_b")
    assert await log.read("run_a", user_id="usr_b") == []
    await sub_a.aclose()
    await sub_b.aclose()
    assert bus.subscriber_count("usr_a") == 0


class FailingBus(InMemoryEventBus):
    async def publish(self, event: RunEvent) -> None:
        raise ConnectionError("bus down")


class FailingLog(InMemoryRunEventLog):
    async def append(self, event: RunEvent) -> None:
        raise OSError("disk full")


async def test_logged_before_published_and_publish_failure_keeps_event() -> None:
    log = InMemoryRunEventLog()
    emitter = emitter_for(EventRecorder(log, FailingBus()))
    await emitter.for_agent("x", None).thinking("kept")
    assert [e.seq for e in await log.read("run_a", user_id="usr_a")] == [1]
    assert emitter.seq == 1


async def test_failed_append_means_no_event_and_no_seq_used() -> None:
    bus = InMemoryEventBus()
    subscription = bus.subscribe("usr_a")
    emitter = emitter_for(EventRecorder(FailingLog(), bus))
    with pytest.raises(OSError, match="disk full"):
        await emitter.for_agent("x", None).thinking("lost")
    assert emitter.seq == 0
    assert not emitter.closed
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(subscription.get(), 0.05)


async def test_slow_subscriber_overflows_instead_of_growing() -> None:
    log, bus = InMemoryRunEventLog(), InMemoryEventBus(max_queue=3)
    subscription = bus.subscribe("usr_a")
    agent = emitter_for(EventRecorder(log, bus)).for_agent("x", None)
    for _ in range(5):
        await agent.thinking("t")
    assert subscription.overflowed
    with pytest.raises(SubscriptionOverflowError):
        await subscription.get()


async def test_log_refuses_gaps_and_prunes_after_retention() -> None:
    now = [0.0]
    log = InMemoryRunEventLog(retention=10, clock=lambda: now[0])
    event = RunEvent.build(
        type=EventType.AGENT_STARTED, run_id="run_a", thread_id="thr_a", user_id="usr_a",
        seq=2, agent="x", parent_agent=None, data={},
    )  # fmt: skip
    with pytest.raises(ValueError, match="seq 2"):
        await log.append(event)
    await emitter_for(EventRecorder(log, InMemoryEventBus())).for_agent("x", None).thinking("t")
    now[0] = 11
    assert log.prune() == 1
    assert await log.read("run_a", user_id="usr_a") == []


class GatedLog(InMemoryRunEventLog):
    """Holds the first append until ``gate`` is set (an event still being logged)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def append(self, event: RunEvent) -> None:
        if not self.gate.is_set():
            self.entered.set()
            await self.gate.wait()
        await super().append(event)


async def test_deltas_queued_while_an_event_is_being_logged_become_one_event() -> None:
    log = GatedLog()
    emitter = emitter_for(EventRecorder(log, InMemoryEventBus()))
    agent = emitter.for_agent("assistant", None)
    await agent.delta("Hel")  # returns at once: the flusher logs it
    await log.entered.wait()
    await agent.delta("lo, ")
    await agent.delta("world")
    log.gate.set()
    await agent.flush()
    events = await log.read("run_a", user_id="usr_a")
    assert [e.seq for e in events] == [1, 2]
    assert [e.data["delta"] for e in events] == ["Hel", "lo, world"]
    assert agent.streamed_text == "Hello, world"


async def test_an_event_emitted_after_deltas_comes_after_their_text() -> None:
    log = InMemoryRunEventLog()
    agent = emitter_for(EventRecorder(log, InMemoryEventBus())).for_agent("assistant", None)
    await agent.delta("first ")
    await agent.thinking("then a thought")
    await agent.delta("and more")
    await agent.emit(EventType.AGENT_COMPLETED, {})
    events = await log.read("run_a", user_id="usr_a")
    assert [e.type for e in events] == [
        EventType.MESSAGE_DELTA, EventType.AGENT_THINKING,
        EventType.MESSAGE_DELTA, EventType.AGENT_COMPLETED,
    ]  # fmt: skip
    assert [e.seq for e in events] == [1, 2, 3, 4]


class DeltaFailingLog(InMemoryRunEventLog):
    async def append(self, event: RunEvent) -> None:
        if event.type is EventType.MESSAGE_DELTA:
            raise OSError("disk full")
        await super().append(event)


async def test_text_that_could_not_be_logged_fails_the_run_but_not_its_ending() -> None:
    log = DeltaFailingLog()
    emitter = emitter_for(EventRecorder(log, InMemoryEventBus()))
    agent = emitter.for_agent("assistant", None)
    await agent.delta("lost")
    with pytest.raises(OSError, match="disk full"):
        await agent.flush()
    with pytest.raises(OSError, match="disk full"):
        await agent.delta("more")
    with pytest.raises(OSError, match="disk full"):
        await agent.emit(EventType.AGENT_COMPLETED, {})  # the answer was not all logged
    await agent.emit(EventType.AGENT_ERROR, {"state": "failed"})
    events = await log.read("run_a", user_id="usr_a")
    assert [(e.seq, e.type) for e in events] == [(1, EventType.AGENT_ERROR)]
    assert emitter.closed


async def test_a_run_with_too_much_text_queued_waits_for_the_flusher() -> None:
    log = GatedLog()
    agent = emitter_for(EventRecorder(log, InMemoryEventBus())).for_agent("assistant", None)
    await agent.delta("a")
    await log.entered.wait()
    blocked = asyncio.create_task(agent.delta("x" * (MAX_QUEUED_DELTA + 1)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not blocked.done()
    log.gate.set()
    await blocked
    await agent.flush()
    events = await log.read("run_a", user_id="usr_a")
    assert "".join(e.data["delta"] for e in events) == "a" + "x" * (MAX_QUEUED_DELTA + 1)
