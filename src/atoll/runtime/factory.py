"""``ExecutionEngineFactory``: the only place that builds ``UserExecutionEngine``.

One factory per process, built where the process is assembled (the app's
lifespan, a worker, a test) and entered with ``async with`` to run the tracker's
monitor. Every run gets its own engine, emitter, agent instances and tool
dispatchers through ``user_execution_scope``; the per-user concurrency limit
lives in the factory's slots, so it holds across engines.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Self

from atoll.errors import InvalidContextError
from atoll.ratelimit import LocalRateLimiter, RateLimiter
from atoll.runtime.agents.base import AgentFactory, AgentRegistry
from atoll.runtime.context import UserExecutionContext
from atoll.runtime.engine import (
    AdmissionHook,
    CompletionHook,
    EngineServices,
    RunOutcome,
    RunRequest,
    StartHook,
    UsageHook,
    UserExecutionEngine,
)
from atoll.runtime.events import EventRecorder, RunEmitter
from atoll.runtime.ids import new_id
from atoll.runtime.limits import RunSlots, RuntimeLimits, UserRunSlots
from atoll.runtime.llm.base import LLMProvider
from atoll.runtime.plans import PlanCatalog
from atoll.runtime.tools.processes import ToolProcessPool
from atoll.runtime.tracker import AgentExecutionTracker, ExecutionRecord
from atoll.telemetry import NoTracing, Tracing

logger = logging.getLogger(__name__)


class ExecutionEngineFactory:
    """Builds one ``UserExecutionEngine`` per run and keeps track of the live ones."""

    def __init__(
        self,
        *,
        registry: AgentRegistry,
        llm: LLMProvider,
        recorder: EventRecorder,
        limits: RuntimeLimits | None = None,
        tracker: AgentExecutionTracker | None = None,
        slots: RunSlots | None = None,
        tool_rate_limiter: RateLimiter | None = None,
        resources: Mapping[type, object] | None = None,
        completion_hook: CompletionHook | None = None,
        start_hook: StartHook | None = None,
        processes: ToolProcessPool | None = None,
        plans: PlanCatalog | None = None,
        admission: AdmissionHook | None = None,
        usage_hook: UsageHook | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.limits = limits or RuntimeLimits()
        self.plans = plans
        self.processes = processes or ToolProcessPool(
            self.limits.tool_processes,
            memory_mb=self.limits.tool_memory_mb,
            preload=sorted({t.fn.__module__ for t in registry.tools.values() if t.cpu_bound}),
            warm=self.limits.tool_processes if self.limits.tool_processes_warm else 0,
        )
        self.registry = registry
        self.recorder = recorder
        self.tracker = tracker or AgentExecutionTracker(
            heartbeat_timeout=self.limits.heartbeat_timeout, run_timeout=self.limits.run_timeout
        )
        self._services = EngineServices(
            agent_factory=AgentFactory(registry),
            llm=llm,
            tracker=self.tracker,
            slots=slots or UserRunSlots(self.limits.max_concurrent_runs),
            limits=self.limits,
            tool_rate_limiter=tool_rate_limiter
            or LocalRateLimiter(self.limits.tool_calls_per_minute, 60.0),
            resources=dict(resources or {}),
            completion_hook=completion_hook,
            start_hook=start_hook,
            processes=self.processes,
            plans=plans,
            admission=admission,
            usage_hook=usage_hook,
            tracing=tracing or NoTracing(),
        )
        self._engines: dict[str, UserExecutionEngine] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._remove_listener = self.tracker.add_listener(self._on_expired)

    def runs_at_once(self, plan: str) -> int:
        """How many runs a user on ``plan`` may have executing at once."""
        if self.plans is None:
            return self.limits.max_concurrent_runs
        return self.plans.get(plan).runs_at_once

    @property
    def slots(self) -> RunSlots:
        """The per-user run slots shared by all engines of this factory."""
        return self._services.slots

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(
            self.tracker.monitoring(
                self.limits.monitor_interval,
                pulse=self._live_run_ids,
                retention=self.limits.record_retention,
            )
        )
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self, reason: str = "shutdown") -> None:
        """Cancel live runs (each still ends with its terminal event) and stop the monitor."""
        for engine in list(self._engines.values()):
            engine.cancel(reason)
        for engine in list(self._engines.values()):
            await engine.wait()
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
        await self.processes.aclose()

    # -- building engines --------------------------------------------------------

    def _create(self, context: UserExecutionContext) -> UserExecutionEngine:
        if not isinstance(context, UserExecutionContext):
            raise TypeError(f"expected a UserExecutionContext, not {type(context).__name__}")
        if context.run_id in self._engines:
            raise InvalidContextError(f"run {context.run_id} already has an engine")
        emitter = RunEmitter(
            self.recorder,
            user_id=context.user_id,
            run_id=context.run_id,
            thread_id=context.thread_id,
            message_id=new_id("msg"),
        )
        return UserExecutionEngine(
            context, self._services.agent_factory, emitter, services=self._services
        )

    @contextlib.asynccontextmanager
    async def user_execution_scope(
        self, context: UserExecutionContext
    ) -> AsyncIterator[UserExecutionEngine]:
        """A fresh engine for ``context``'s run; cancelled and forgotten when the block ends."""
        engine = self._create(context)
        self._engines[context.run_id] = engine
        try:
            yield engine
        finally:
            if engine.is_running:
                engine.cancel("scope_closed")
                await engine.wait()
            engine.release()
            self._engines.pop(context.run_id, None)

    async def run(self, context: UserExecutionContext, request: RunRequest) -> RunOutcome:
        """Execute one run in its own scope and return its outcome."""
        async with self.user_execution_scope(context) as engine:
            return await engine.run(request)

    # -- control -----------------------------------------------------------------

    def cancel(self, run_id: str, *, user_id: str, reason: str = "user") -> bool:
        """Cancel ``run_id`` if it is live here and belongs to ``user_id``."""
        engine = self._engines.get(run_id)
        if engine is None or engine.context.user_id != user_id:
            return False
        return engine.cancel(reason)

    def live_runs(self, user_id: str | None = None) -> list[str]:
        """Run ids of the engines alive in this process (optionally of one user)."""
        return [
            run_id
            for run_id, engine in self._engines.items()
            if engine.is_running and (user_id is None or engine.context.user_id == user_id)
        ]

    def _live_run_ids(self) -> list[str]:
        return self.live_runs()

    def _on_expired(self, record: ExecutionRecord) -> None:
        engine = self._engines.get(record.run_id)
        if engine is not None:
            engine.expire()
