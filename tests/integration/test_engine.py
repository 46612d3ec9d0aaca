"""The engine end to end in one process: lifecycle, events, cancel, timeout, dead, limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from atoll.errors import AtollError, RunLimitError
from atoll.runtime.agents.base import Agent, AgentFactory, AgentRegistry, AgentRunContext
from atoll.runtime.builtins import builtin_registry
from atoll.runtime.engine import RunRequest
from atoll.runtime.events import EventType, RunEvent
from atoll.runtime.ids import new_id
from atoll.runtime.limits import RuntimeLimits
from atoll.runtime.llm.offline import OfflineProvider
from atoll.runtime.state import ExecutionState
from atoll.runtime.tools.base import tool

from support import Runtime, is_subsequence, make_context, types_of, until

pytestmark = pytest.mark.integration

GOLDEN = ["agent_started", "agent_thinking", "tool_executing", "tool_completed",
          "message_delta", "agent_completed"]  # fmt: skip
TERMINAL = {"agent_completed", "agent_error", "agent_cancelled"}


def terminal_events(events: list[RunEvent]) -> list[RunEvent]:
    return [e for e in events if e.ends_run]


def assert_well_formed(events: list[RunEvent]) -> None:
    """Gapless seq from 1, exactly one terminal event, and it is last."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len(terminal_events(events)) == 1
    assert events[-1].ends_run


@tool(name="wait_forever", timeout=60)
async def wait_forever(marker: str) -> str:
    """Waits (for cancellation tests)."""
    await asyncio.sleep(60)
    return marker


class ToolCallingAgent(Agent):
    name = "tool_caller"
    description = "Calls wait_forever."
    tools = ("wait_forever",)

    async def run(self, run: AgentRunContext) -> str:
        await run.thinking("calling the slow tool")
        await run.tools.call("wait_forever", {"marker": "x"})
        return "never"


class FailingAgent(Agent):
    name = "failing"
    description = "Raises."

    async def run(self, run: AgentRunContext) -> str:
        await run.delta("partial ")
        raise ValueError("secret internal detail")


class TypedFailingAgent(Agent):
    name = "typed_failing"
    description = "Raises an AtollError."

    async def run(self, run: AgentRunContext) -> str:
        raise AtollError("the model refused")


class SleepyAgent(Agent):
    name = "sleepy"
    description = "Sleeps."

    async def run(self, run: AgentRunContext) -> str:
        await asyncio.sleep(60)
        return "late"


class LoopBlockingAgent(Agent):
    name = "blocker"
    description = "Blocks the event loop, then awaits."

    async def run(self, run: AgentRunContext) -> str:
        await run.thinking("about to block")
        time.sleep(0.5)  # noqa: ASYNC251 - simulates a blocked event loop on purpose
        await asyncio.sleep(30)
        return "unreachable"


class GatedAgent(Agent):
    """Waits until the test opens its gate; records concurrency per user."""

    name = "gated"
    description = "Waits on a gate."
    gate: asyncio.Event
    active: dict[str, int]
    peak: dict[str, int]

    async def run(self, run: AgentRunContext) -> str:
        user = run.user.user_id
        self.active[user] = self.active.get(user, 0) + 1
        self.peak[user] = max(self.peak.get(user, 0), self.active[user])
        try:
            await self.gate.wait()
        finally:
            self.active[user] -= 1
        return "done"


class NestingAgent(Agent):
    name = "nesting"
    description = "Calls itself until the depth limit stops it."

    async def run(self, run: AgentRunContext) -> str:
        return await run.call_agent("nesting", "again")


class NonStreamingAgent(Agent):
    name = "quiet"
    description = "Returns an answer without streaming it."

    async def run(self, run: AgentRunContext) -> str:
        await run.delta("Hello, ")
        return "Hello, world"


def test_registry() -> AgentRegistry:
    registry = builtin_registry()
    for agent in (ToolCallingAgent, FailingAgent, TypedFailingAgent, SleepyAgent,
                  LoopBlockingAgent, NestingAgent, NonStreamingAgent):  # fmt: skip
        registry.register_agent(agent)
    registry.register_tool(wait_forever)
    return registry


test_registry.__test__ = False  # type: ignore[attr-defined]


async def wait_for_event(rt: Runtime, run_id: str, user_id: str, kind: str) -> None:
    async def seen() -> bool:
        events = await rt.log.read(run_id, user_id=user_id)
        return any(e.type.value == kind for e in events)

    await until(seen, what=kind)


@pytest.mark.golden_path
async def test_supervisor_answers_17_times_23_with_the_golden_event_order(
    runtime: Runtime,
) -> None:
    outcome, events = await runtime.run("What is 17*23?", agent="supervisor")
    assert outcome.state is ExecutionState.COMPLETED
    assert outcome.content is not None
    assert "391" in outcome.content
    assert "offline model" in outcome.content
    assert is_subsequence(GOLDEN, types_of(events)), types_of(events)
    assert_well_formed(events)
    tool_events = [e for e in events if e.type.value.startswith("tool_")]
    assert tool_events[0].data["tool"] == "calculator"
    assert tool_events[1].data["result"] == {"expression": "17*23", "value": 391}
    assert all(e.agent == "assistant" and e.parent_agent == "supervisor" for e in tool_events)
    sub_started = [e for e in events if e.type is EventType.AGENT_STARTED and e.parent_agent]
    assert [e.agent for e in sub_started] == ["assistant"]
    deltas = [e for e in events if e.type is EventType.MESSAGE_DELTA]
    assert all(e.agent == "supervisor" and e.parent_agent is None for e in deltas)
    assert "".join(e.data["delta"] for e in deltas) == outcome.content
    final = events[-1]
    assert final.type is EventType.AGENT_COMPLETED
    assert final.data["message"] == {
        "id": outcome.message_id, "role": "assistant", "content": outcome.content,
    }  # fmt: skip
    assert final.data["usage"]["completion_tokens"] > 0
    record = runtime.factory.tracker.get(outcome.run_id)
    assert [s for s, _ in record.transitions] == [
        ExecutionState.PENDING, ExecutionState.STARTING, ExecutionState.RUNNING,
        ExecutionState.COMPLETING, ExecutionState.COMPLETED,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("question", "tool_name", "expected"),
    [("What is 12 times 12?", "calculator", "144"),
     ("What time is it in Asia/Tokyo?", "current_time", "Asia/Tokyo"),
     ("How do plugins work?", "knowledge_search", "ATOLL_PLUGINS")],
)  # fmt: skip
async def test_assistant_uses_the_real_tools(
    runtime: Runtime, question: str, tool_name: str, expected: str
) -> None:
    outcome, events = await runtime.run(question)
    assert outcome.state is ExecutionState.COMPLETED
    assert outcome.content is not None
    assert expected in outcome.content
    assert [e.data["tool"] for e in events if e.type is EventType.TOOL_EXECUTING] == [tool_name]
    assert is_subsequence(GOLDEN, types_of(events))
    assert_well_formed(events)


async def test_offline_model_says_what_it_is_for_open_questions(runtime: Runtime) -> None:
    outcome, events = await runtime.run("hello")
    assert outcome.content is not None
    assert "offline model" in outcome.content
    assert_well_formed(events)


async def test_unknown_agent_is_refused_before_the_run_exists(runtime: Runtime) -> None:
    context = make_context()
    with pytest.raises(AtollError) as info:
        await runtime.factory.run(context, RunRequest("nope", "hi", new_id("msg")))
    assert info.value.code == "unknown_agent"
    assert runtime.factory.tracker.find(context.run_id) is None


async def test_agent_exception_fails_with_one_terminal_event(
    build_runtime: Callable[..., Runtime],
) -> None:
    rt = build_runtime(registry=test_registry())
    async with rt.factory:
        outcome, events = await rt.run("x", agent="failing")
        assert outcome.state is ExecutionState.FAILED
        assert_well_formed(events)
        assert events[-1].data == {
            "state": "failed", "code": "internal_error",
            "message": "the agent failed unexpectedly (ValueError)",
        }  # fmt: skip
        assert "secret" not in events[-1].payload.decode()
        outcome, events = await rt.run("x", agent="typed_failing")
        assert events[-1].data["code"] == "internal_error"
        assert events[-1].data["message"] == "the model refused"


async def test_unstreamed_rest_of_answer_is_sent_as_a_delta(
    build_runtime: Callable[..., Runtime],
) -> None:
    rt = build_runtime(registry=test_registry())
    async with rt.factory:
        outcome, events = await rt.run("x", agent="quiet")
    deltas = [e.data["delta"] for e in events if e.type is EventType.MESSAGE_DELTA]
    # Queued in the same loop turn, the streamed part and the rest are one coalesced delta.
    assert "".join(deltas) == "Hello, world"
    assert events[-1].type is EventType.AGENT_COMPLETED
    assert outcome.content == "Hello, world"


async def test_cancel_mid_tool(build_runtime: Callable[..., Runtime]) -> None:
    rt = build_runtime(registry=test_registry())
    async with rt.factory:
        context = make_context()
        async with rt.factory.user_execution_scope(context) as engine:
            task = asyncio.create_task(engine.run(RunRequest("tool_caller", "x", new_id("msg"))))
            await wait_for_event(rt, context.run_id, context.user_id, "tool_executing")
            assert not rt.factory.cancel(context.run_id, user_id=new_id("usr"))  # not the owner
            assert rt.factory.cancel(context.run_id, user_id=context.user_id, reason="user")
            assert rt.factory.cancel(context.run_id, user_id=context.user_id)  # idempotent
            outcome = await asyncio.wait_for(task, 5)
        events = await rt.log.read(context.run_id, user_id=context.user_id)
    assert outcome.state is ExecutionState.CANCELLED
    assert types_of(events)[-3:] == ["tool_executing", "tool_completed", "agent_cancelled"]
    assert events[-2].data["error"]["code"] == "cancelled"
    assert events[-1].data == {"reason": "user"}
    assert_well_formed(events)
    assert not engine.cancel()  # finished: cancelling again is a no-op


async def test_cancel_mid_llm_stream(build_runtime: Callable[..., Runtime]) -> None:
    rt = build_runtime(llm=OfflineProvider(token_delay=0.05))
    async with rt.factory:
        context = make_context()
        async with rt.factory.user_execution_scope(context) as engine:
            task = asyncio.create_task(engine.run(RunRequest("assistant", "hello", new_id("msg"))))
            await wait_for_event(rt, context.run_id, context.user_id, "message_delta")
            engine.cancel("stop button")
            outcome = await asyncio.wait_for(task, 5)
        events = await rt.log.read(context.run_id, user_id=context.user_id)
    assert outcome.state is ExecutionState.CANCELLED
    deltas = [e for e in events if e.type is EventType.MESSAGE_DELTA]
    assert 1 <= len(deltas) < 5  # stopped mid-stream
    assert events[-1].data == {"reason": "stop button"}
    assert_well_formed(events)


async def test_run_timeout(build_runtime: Callable[..., Runtime]) -> None:
    rt = build_runtime(registry=test_registry(), limits=RuntimeLimits(run_timeout=0.2,
                       monitor_interval=0.05))  # fmt: skip
    async with rt.factory:
        outcome, events = await rt.run("x", agent="sleepy")
    assert outcome.state is ExecutionState.TIMEOUT
    assert events[-1].type is EventType.AGENT_ERROR
    assert events[-1].data["state"] == "timeout"
    assert events[-1].data["code"] == "run_timeout"
    assert_well_formed(events)


async def test_blocked_event_loop_is_detected_as_dead(
    build_runtime: Callable[..., Runtime],
) -> None:
    limits = RuntimeLimits(heartbeat_timeout=0.2, monitor_interval=0.02)
    rt = build_runtime(registry=test_registry(), limits=limits)
    async with rt.factory:
        outcome, events = await asyncio.wait_for(rt.run("x", agent="blocker"), 10)
    assert outcome.state is ExecutionState.DEAD
    assert events[-1].data["state"] == "dead"
    assert events[-1].data["code"] == "run_dead"
    assert_well_formed(events)


async def test_long_quiet_run_is_kept_alive_by_the_pulse(
    build_runtime: Callable[..., Runtime],
) -> None:
    limits = RuntimeLimits(heartbeat_timeout=0.15, monitor_interval=0.02, run_timeout=0.6)
    rt = build_runtime(registry=test_registry(), limits=limits)
    async with rt.factory:
        outcome, _ = await rt.run("x", agent="sleepy")
    # Quiet for far longer than the heartbeat timeout, yet not DEAD: it ends by TIMEOUT.
    assert outcome.state is ExecutionState.TIMEOUT


async def test_sub_agent_depth_limit_fails_cleanly(build_runtime: Callable[..., Runtime]) -> None:
    rt = build_runtime(registry=test_registry())
    async with rt.factory:
        outcome, events = await rt.run("x", agent="nesting")
    assert outcome.state is ExecutionState.FAILED
    assert events[-1].data["code"] == "sub_agent_failed"
    sub_errors = [e for e in events if e.type is EventType.AGENT_ERROR and e.parent_agent]
    assert len(sub_errors) == 10
    assert_well_formed(events)


def gated_registry(gate: asyncio.Event) -> tuple[AgentRegistry, type[GatedAgent]]:
    registry = builtin_registry()
    agent = type("Gated", (GatedAgent,), {"gate": gate, "active": {}, "peak": {}})
    registry.register_agent(agent)
    return registry, agent


async def test_per_user_limit_waits_across_engines(build_runtime: Callable[..., Runtime]) -> None:
    gate = asyncio.Event()
    registry, agent = gated_registry(gate)
    rt = build_runtime(registry=registry, limits=RuntimeLimits(max_concurrent_runs=3))
    user, other = new_id("usr"), new_id("usr")
    async with rt.factory:
        runs = [asyncio.create_task(rt.run("x", agent="gated", user_id=user)) for _ in range(5)]
        runs.append(asyncio.create_task(rt.run("x", agent="gated", user_id=other)))
        await until(lambda: agent.active.get(user, 0) == 3 and agent.active.get(other, 0) == 1)
        counts = rt.factory.tracker.counts()
        assert counts[ExecutionState.PENDING] == 2  # the 4th and 5th wait
        assert rt.factory.slots.active(user) == 3
        gate.set()
        outcomes = await asyncio.gather(*runs)
    assert all(o.state is ExecutionState.COMPLETED for o, _ in outcomes)
    assert agent.peak == {user: 3, other: 1}
    assert rt.factory.slots.active(user) == 0


async def test_per_user_limit_rejects_when_configured(
    build_runtime: Callable[..., Runtime],
) -> None:
    gate = asyncio.Event()
    registry, agent = gated_registry(gate)
    rt = build_runtime(
        registry=registry, limits=RuntimeLimits(max_concurrent_runs=2, overflow="reject")
    )
    user = new_id("usr")
    async with rt.factory:
        runs = [asyncio.create_task(rt.run("x", agent="gated", user_id=user)) for _ in range(2)]
        await until(lambda: agent.active.get(user, 0) == 2)
        context = make_context(user_id=user)
        with pytest.raises(RunLimitError) as info:
            await rt.factory.run(context, RunRequest("gated", "x", new_id("msg")))
        assert info.value.code == "run_limit"
        assert rt.factory.tracker.find(context.run_id) is None
        gate.set()
        await asyncio.gather(*runs)


async def test_cancel_while_pending(build_runtime: Callable[..., Runtime]) -> None:
    gate = asyncio.Event()
    registry, agent = gated_registry(gate)
    rt = build_runtime(registry=registry, limits=RuntimeLimits(max_concurrent_runs=1))
    user = new_id("usr")
    async with rt.factory:
        first = asyncio.create_task(rt.run("x", agent="gated", user_id=user))
        await until(lambda: agent.active.get(user, 0) == 1)
        context = make_context(user_id=user)
        async with rt.factory.user_execution_scope(context) as engine:
            second = asyncio.create_task(engine.run(RunRequest("gated", "x", new_id("msg"))))
            await until(lambda: rt.factory.tracker.find(context.run_id) is not None)
            assert engine.cancel("changed my mind")
            outcome = await second
        gate.set()
        await first
    events = await rt.log.read(context.run_id, user_id=user)
    assert outcome.state is ExecutionState.CANCELLED
    assert types_of(events) == ["agent_cancelled"]
    assert rt.factory.slots.active(user) == 0


async def test_factory_close_ends_live_runs_with_terminal_events(
    build_runtime: Callable[..., Runtime],
) -> None:
    rt = build_runtime(registry=test_registry())
    context = make_context()
    async with rt.factory:
        scope = rt.factory.user_execution_scope(context)
        engine = await scope.__aenter__()
        task = asyncio.create_task(engine.run(RunRequest("sleepy", "x", new_id("msg"))))
        await wait_for_event(rt, context.run_id, context.user_id, "agent_started")
    outcome = await task
    await scope.__aexit__(None, None, None)
    assert outcome.state is ExecutionState.CANCELLED
    events = await rt.log.read(context.run_id, user_id=context.user_id)
    assert events[-1].data == {"reason": "shutdown"}
    assert_well_formed(events)


async def test_owner_cancelling_the_task_still_gets_a_terminal_event(
    build_runtime: Callable[..., Runtime],
) -> None:
    rt = build_runtime(registry=test_registry())
    context = make_context()
    async with rt.factory:
        task = asyncio.create_task(rt.factory.run(context, RunRequest("sleepy", "x", "msg_in1")))
        await wait_for_event(rt, context.run_id, context.user_id, "agent_started")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    events = await rt.log.read(context.run_id, user_id=context.user_id)
    assert events[-1].type is EventType.AGENT_CANCELLED
    assert_well_formed(events)


async def test_completion_hook_runs_before_agent_completed(
    build_runtime: Callable[..., Runtime],
) -> None:
    stored: list[tuple[str, str, int]] = []
    holder: list[Runtime] = []

    async def store(context: Any, message_id: str, content: str) -> None:
        seen = await holder[0].log.read(context.run_id, user_id=context.user_id)
        stored.append((message_id, content, len(seen)))

    rt = build_runtime(completion_hook=store)
    holder.append(rt)
    async with rt.factory:
        outcome, events = await rt.run("What is 2+2?")
    assert stored == [(outcome.message_id, outcome.content, len(events) - 1)]


async def test_every_run_gets_its_own_engine_and_agent_instances(runtime: Runtime) -> None:
    factory = AgentFactory(builtin_registry())
    assert factory.create("assistant") is not factory.create("assistant")
    user = new_id("usr")
    a, b = make_context(user_id=user), make_context(user_id=user)
    async with (
        runtime.factory.user_execution_scope(a) as engine_a,
        runtime.factory.user_execution_scope(b) as engine_b,
    ):
        assert engine_a is not engine_b
        assert engine_a.message_id != engine_b.message_id
        assert sorted(runtime.factory.live_runs()) == []  # not started yet


async def test_cancel_before_start(runtime: Runtime) -> None:
    context = make_context()
    async with runtime.factory.user_execution_scope(context) as engine:
        assert engine.cancel("early")
        outcome = await engine.run(RunRequest("assistant", "hi", new_id("msg")))
    assert outcome.state is ExecutionState.CANCELLED
    events = await runtime.log.read(context.run_id, user_id=context.user_id)
    assert [(e.type.value, dict(e.data)) for e in events] == [
        ("agent_cancelled", {"reason": "early"})
    ]


async def test_slots_survive_a_waiter_cancelled_after_release_skipped_it() -> None:
    from atoll.runtime.limits import UserRunSlots

    slots = UserRunSlots(1)
    await slots.try_acquire("usr_a")
    first = asyncio.create_task(slots.acquire("usr_a"))
    second = asyncio.create_task(slots.acquire("usr_a"))
    await until(lambda: slots.waiting("usr_a") == 2)
    first.cancel()  # cancelled, but still queued until release() skips it
    await slots.release("usr_a")  # pops the cancelled waiter, hands the slot to the second
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert slots.active("usr_a") == 1
    assert slots.waiting("usr_a") == 0
    await slots.release("usr_a")
    assert slots.active("usr_a") == 0


@pytest.mark.parametrize(
    ("question", "tool_name", "expected"),
    [("What time is it in Asia/Tokyo?", "current_time", "Asia/Tokyo"),
     ("How do plugins work?", "knowledge_search", "ATOLL_PLUGINS")],
)  # fmt: skip
async def test_supervisor_passes_the_whole_question_to_its_specialist(
    runtime: Runtime, question: str, tool_name: str, expected: str
) -> None:
    outcome, events = await runtime.run(question, agent="supervisor")
    sub_started = next(e for e in events if e.type is EventType.AGENT_STARTED and e.parent_agent)
    # The specialist's task is the user's message itself: referenced, not copied.
    assert "task" not in sub_started.data
    assert sub_started.data["input_message_id"] == events[0].data["input_message_id"]
    assert [e.data["tool"] for e in events if e.type is EventType.TOOL_EXECUTING] == [tool_name]
    assert outcome.content is not None
    assert expected in outcome.content


@pytest.mark.parametrize("message", ["(" * 32_000, "What is " + "1+" * 15_999 + "1?"])
async def test_a_long_message_is_not_copied_into_the_run_s_events(
    runtime: Runtime, message: str
) -> None:
    """The log holds the message once (as the message); events reference it and show previews."""
    _, events = await runtime.run(message, agent="supervisor")
    logged = sum(len(event.payload) for event in events)
    assert logged < 12_000, [(e.type.value, len(e.payload)) for e in events]
