"""Property: many users, interleaved concurrent runs — isolation and lifecycle always hold.

For any mix of users and runs (successes, tool calls, sub-agents, failures,
timeouts, cancellations) started in any interleaving:
- each user's event stream carries only that user's events;
- every run ends with exactly one terminal event, and it is the last one;
- ``seq`` is gapless per run, and live delivery equals the log;
- no user ever has more alive runs than the per-user limit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atoll.bus.memory import InMemoryEventBus, InMemoryRunEventLog, MemorySubscription
from atoll.runtime.agents.base import Agent, AgentRunContext
from atoll.runtime.builtins import builtin_registry
from atoll.runtime.engine import RunOutcome, RunRequest
from atoll.runtime.events import EventRecorder
from atoll.runtime.factory import ExecutionEngineFactory
from atoll.runtime.ids import new_id
from atoll.runtime.limits import RuntimeLimits
from atoll.runtime.llm.offline import OfflineProvider
from atoll.runtime.state import ExecutionState
from atoll.runtime.tools.knowledge import KnowledgeBase

from support import make_context, until

pytestmark = [pytest.mark.multi_user, pytest.mark.security]

LIMIT = 2
BEHAVIOURS = ["ok", "tool", "sub", "fail", "timeout", "cancel"]
EXPECTED = {
    "ok": ExecutionState.COMPLETED,
    "tool": ExecutionState.COMPLETED,
    "sub": ExecutionState.COMPLETED,
    "fail": ExecutionState.FAILED,
    "timeout": ExecutionState.TIMEOUT,
    "cancel": ExecutionState.CANCELLED,
}


@dataclass
class Concurrency:
    active: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)


def scenario_agent(concurrency: Concurrency) -> type[Agent]:
    class Scenario(Agent):
        name = "scenario"
        description = "Behaves as its input says."

        async def run(self, run: AgentRunContext) -> str:
            user = run.user.user_id
            concurrency.active[user] = concurrency.active.get(user, 0) + 1
            concurrency.peak[user] = max(concurrency.peak.get(user, 0), concurrency.active[user])
            try:
                return await self._behave(run)
            finally:
                concurrency.active[user] -= 1

        async def _behave(self, run: AgentRunContext) -> str:
            behaviour = run.input
            await run.thinking(f"doing {behaviour}")
            if behaviour == "tool":
                result = await run.tools.call("calculator", {"expression": "6*7"})
                await run.delta(str(result.result["value"]))
                return "42"
            if behaviour == "sub":
                return await run.call_agent("assistant", "What is 6*7?")
            if behaviour == "fail":
                await run.delta("partial")
                raise RuntimeError("boom")
            if behaviour in ("timeout", "cancel"):
                await asyncio.sleep(30)
            await run.delta("fine")
            return "fine"

    return Scenario


plans = st.lists(
    st.lists(
        st.tuples(st.sampled_from(BEHAVIOURS), st.integers(0, 3)),
        min_size=1,
        max_size=5,
    ),
    min_size=2,
    max_size=4,
)


async def scenario(plan: list[list[tuple[str, int]]]) -> None:
    concurrency = Concurrency()
    registry = builtin_registry()
    registry.register_agent(scenario_agent(concurrency))
    log, bus = InMemoryRunEventLog(), InMemoryEventBus()
    factory = ExecutionEngineFactory(
        registry=registry,
        llm=OfflineProvider(),
        recorder=EventRecorder(log, bus),
        limits=RuntimeLimits(
            max_concurrent_runs=LIMIT, run_timeout=0.15, monitor_interval=0.02, tool_processes=1
        ),
        resources={KnowledgeBase: KnowledgeBase()},
    )
    users = [new_id("usr") for _ in plan]
    subscriptions: dict[str, MemorySubscription] = {u: bus.subscribe(u) for u in users}
    runs: dict[str, tuple[str, str]] = {}  # run_id -> (user, behaviour)

    async def one_run(user: str, behaviour: str, yields: int) -> RunOutcome:
        for _ in range(yields):
            await asyncio.sleep(0)
        context = make_context(user_id=user)
        runs[context.run_id] = (user, behaviour)
        async with factory.user_execution_scope(context) as engine:
            task = asyncio.create_task(engine.run(RunRequest("scenario", behaviour, new_id("msg"))))
            if behaviour == "cancel":
                await until(lambda: factory.tracker.find(context.run_id) is not None)
                for _ in range(yields):
                    await asyncio.sleep(0)
                engine.cancel("property")
            return await task

    async with factory:
        # The calculator runs in a tool process: started before the runs, as a server does,
        # so the 0.15 s run timeout times the runs and not a process start.
        async with factory.processes.worker("usr_warm"):
            pass
        outcomes = await asyncio.gather(
            *(
                one_run(user, behaviour, yields)
                for user, user_plan in zip(users, plan, strict=True)
                for behaviour, yields in user_plan
            )
        )

    for outcome in outcomes:
        assert outcome.state is EXPECTED[runs[outcome.run_id][1]], (outcome, runs[outcome.run_id])

    for user in users:
        subscription = subscriptions[user]
        delivered = subscription.drain()
        assert {e.user_id for e in delivered} <= {user}
        own_runs = {run_id for run_id, (owner, _) in runs.items() if owner == user}
        assert {e.run_id for e in delivered} == own_runs
        for run_id in own_runs:
            logged = await log.read(run_id, user_id=user)
            assert [e.seq for e in logged] == list(range(1, len(logged) + 1))
            assert [e for e in logged if e.ends_run] == [logged[-1]]
            live = [e.seq for e in delivered if e.run_id == run_id]
            assert live == [e.seq for e in logged]
            for other in users:
                if other != user:
                    assert await log.read(run_id, user_id=other) == []
        assert concurrency.peak.get(user, 0) <= LIMIT
        await subscription.aclose()
    assert all(v == 0 for v in concurrency.active.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans)
def test_many_users_interleaved_runs_never_cross(plan: list[list[tuple[str, int]]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(plan), timeout=60))
