"""``UserExecutionEngine``: executes one run of one user, start to terminal event.

Engines are built only by ``ExecutionEngineFactory`` (one per run) and hold no
class- or module-level state. Whatever happens — success, an agent error, the
run timeout, a dead heartbeat, a user's cancel, the owner cancelling the task —
the run ends with exactly one terminal event and a terminal tracker state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from atoll.errors import (
    AtollError,
    InvalidContextError,
    RunClosedError,
    RunInterruptedError,
    RunTimeoutError,
    SubAgentError,
)
from atoll.ratelimit import RateLimiter
from atoll.runtime.agents.base import AgentFactory, AgentRunContext
from atoll.runtime.context import UserExecutionContext
from atoll.runtime.endings import INTERNAL_ERROR, INTERRUPTED, Ending
from atoll.runtime.events import AgentEmitter, EventType, RunEmitter, preview
from atoll.runtime.ids import new_id
from atoll.runtime.limits import RunSlots, RuntimeLimits
from atoll.runtime.llm.base import (
    ChatMessage,
    LLMChunk,
    LLMClient,
    LLMProvider,
    ToolChoice,
    ToolSpec,
    Usage,
)
from atoll.runtime.plans import Plan, PlanCatalog
from atoll.runtime.state import ExecutionState
from atoll.runtime.tools.dispatcher import ToolDispatcher
from atoll.runtime.tools.processes import ToolProcessPool
from atoll.runtime.tracker import AgentExecutionTracker
from atoll.telemetry import NoTracing, Tracing, hashed

logger = logging.getLogger(__name__)

CompletionHook = Callable[[UserExecutionContext, str, str], Awaitable[None]]
"""``hook(context, message_id, content)``: stores the answer before ``agent_completed``."""
StartHook = Callable[[UserExecutionContext, datetime], Awaitable[None]]
"""``hook(context, started_at)``: the run has begun (called before ``agent_started``); a
failure is logged, not fatal (the run's end is recorded anyway)."""
UsageHook = Callable[[UserExecutionContext, int], Awaitable[None]]
"""``hook(context, tokens)``: count the model tokens a run spent; awaited before the run
gives its slot back, so the user's next run is admitted against the count."""
AdmissionHook = Callable[[UserExecutionContext, Plan], Awaitable[None]]
"""``hook(context, plan)``: may the run begin? Called once it holds its slot, before
``agent_started``; an ``AtollError`` it raises (``quota_exceeded``) ends the run FAILED."""


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What to run: the agent, the user's message and the thread's history."""

    agent: str
    input: str
    input_message_id: str
    history: Sequence[ChatMessage] = ()


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended."""

    run_id: str
    state: ExecutionState
    message_id: str
    content: str | None = None
    error: Mapping[str, Any] | None = None
    usage: Mapping[str, int] = field(default_factory=dict)
    duration_ms: float = 0.0
    cpu_seconds: float = 0.0
    """CPU the run took on the event loop's thread (its task and its delta flusher)."""


@dataclass(frozen=True, slots=True)
class EngineServices:
    """The shared, per-process collaborators an engine uses (all built by the factory)."""

    agent_factory: AgentFactory
    llm: LLMProvider
    tracker: AgentExecutionTracker
    slots: RunSlots
    limits: RuntimeLimits
    tool_rate_limiter: RateLimiter | None = None
    resources: Mapping[type, object] = field(default_factory=dict)
    completion_hook: CompletionHook | None = None
    start_hook: StartHook | None = None
    processes: ToolProcessPool | None = None
    plans: PlanCatalog | None = None
    """The plans; None: nothing is gated by plan (runs at once are ``limits``')."""
    admission: AdmissionHook | None = None
    usage_hook: UsageHook | None = None
    tracing: Tracing = field(default_factory=NoTracing)


class UsageMeter:
    """Sums the token usage of every model call of one run (sub-agents included)."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def as_dict(self) -> dict[str, int]:
        """``{prompt_tokens, completion_tokens}``."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    def wrap(self, client: LLMClient, tracing: Tracing | None = None) -> LLMClient:
        """``client`` with its usage counted here (and each call traced: ``chat <model>``)."""
        return _MeteredClient(client, self, tracing or NoTracing())


class _MeteredClient:
    def __init__(self, inner: LLMClient, meter: UsageMeter, tracing: Tracing) -> None:
        self._inner = inner
        self._meter = meter
        self._tracing = tracing
        self.model = inner.model

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice | None = None,
    ) -> AsyncIterator[LLMChunk]:
        # Not the current span: an async generator's context cannot hold one across yields.
        span = self._tracing.start(
            f"chat {self.model}",
            {"gen_ai.operation.name": "chat", "gen_ai.request.model": self.model},
        )
        prompt = completion = 0
        try:
            async for chunk in self._inner.stream(messages, tools=tools, tool_choice=tool_choice):
                if isinstance(chunk, Usage):
                    self._meter.prompt_tokens += chunk.prompt_tokens
                    self._meter.completion_tokens += chunk.completion_tokens
                    prompt += chunk.prompt_tokens
                    completion += chunk.completion_tokens
                yield chunk
        except Exception as exc:
            span.fail(str(getattr(exc, "code", type(exc).__name__)))
            raise
        finally:
            span.set("gen_ai.usage.input_tokens", prompt)
            span.set("gen_ai.usage.output_tokens", completion)
            span.end()


class UserExecutionEngine:
    """Runs one agent run for the one user of ``context``.

    Build it with ``ExecutionEngineFactory.user_execution_scope``; ``run`` may be
    called once. ``cancel`` is cooperative: it cancels the run's task, which
    interrupts whatever the agent awaits (a tool call, an LLM stream).
    """

    def __init__(
        self,
        context: UserExecutionContext,
        agent_factory: AgentFactory,
        emitter: RunEmitter,
        *,
        services: EngineServices,
    ) -> None:
        if emitter.user_id != context.user_id or emitter.run_id != context.run_id:
            raise InvalidContextError("the emitter is bound to another user or run")
        self.context = context
        self._agent_factory = agent_factory
        self._emitter = emitter
        self._services = services
        self._tracker = services.tracker
        self.plan = services.plans.get(context.plan) if services.plans is not None else None
        """The user's plan (None when the factory gates nothing by plan)."""
        self._meter = UsageMeter()
        self._task: asyncio.Task[Any] | None = None
        self._cancel_reason: str | None = None
        self._expired = False
        self._request: RunRequest | None = None
        self._done = asyncio.Event()
        self.outcome: RunOutcome | None = None

    @property
    def run_id(self) -> str:
        """The run this engine executes."""
        return self.context.run_id

    @property
    def message_id(self) -> str:
        """The id the answer message will have."""
        return self._emitter.message_id

    @property
    def ended_in_log(self) -> bool:
        """Whether the run's terminal event was logged (which also ended its row)."""
        return self._emitter.closed

    @property
    def is_running(self) -> bool:
        """True between the start of ``run`` and its end."""
        return self._task is not None and not self._done.is_set()

    def release(self) -> None:
        """Let go of what the run holds once it is over (its emitter's flusher)."""
        self._emitter.release()

    async def wait(self) -> RunOutcome | None:
        """Wait until the run has ended (returns at once if it never started)."""
        if self._task is not None:
            await self._done.wait()
        return self.outcome

    # -- control -------------------------------------------------------------

    def cancel(self, reason: str = "user") -> bool:
        """Ask the run to stop; True if this cancelled it. Idempotent."""
        if self._task is None:
            # Not started yet: the run will end CANCELLED as soon as it starts.
            self._cancel_reason = self._cancel_reason or reason
            return True
        record = self._tracker.find(self.run_id)
        if self._done.is_set() or record is None:
            return False
        if not record.state.is_alive or record.state is ExecutionState.COMPLETING:
            return False
        if self._cancel_reason is None:
            self._cancel_reason = reason
            self._task.cancel()
        return True

    def expire(self) -> None:
        """Called when the monitor marked this run DEAD or TIMEOUT: stop the agent."""
        if self._task is not None and not self._done.is_set() and not self._expired:
            self._expired = True
            self._task.cancel()

    # -- the run -------------------------------------------------------------

    async def run(self, request: RunRequest) -> RunOutcome:
        """Execute ``request`` to its end and return the outcome."""
        if self._task is not None:
            raise RuntimeError("an engine executes exactly one run")
        self._task = asyncio.current_task()
        self._request = request
        try:
            outcome = await self._emitter.cpu.meter(self._run(request))
            return replace(outcome, cpu_seconds=self._emitter.cpu.seconds)
        finally:
            self._done.set()

    async def _run(self, request: RunRequest) -> RunOutcome:
        """``_execute`` inside the run's span (``atoll.run``; the agents' spans are its)."""
        ctx = self.context
        attributes: dict[str, str | int] = {
            "atoll.run_id": ctx.run_id,
            "gen_ai.conversation.id": ctx.thread_id,
            "gen_ai.agent.name": request.agent,
            "atoll.user": hashed(ctx.user_id),
            "atoll.plan": ctx.plan,
        }
        if ctx.org_id is not None:
            attributes["atoll.org"] = hashed(ctx.org_id)
        with self._services.tracing.span("atoll.run", attributes) as span:
            outcome = await self._execute(request)
            span.set("atoll.run.state", outcome.state.value)
            span.set("gen_ai.usage.input_tokens", self._meter.prompt_tokens)
            span.set("gen_ai.usage.output_tokens", self._meter.completion_tokens)
            if outcome.error is not None:
                span.fail(str(outcome.error.get("code", outcome.state.value)))
            return outcome

    async def _execute(self, request: RunRequest) -> RunOutcome:
        services, ctx, plan = self._services, self.context, self.plan
        agent_class = self._agent_factory.registry.agent(request.agent)
        limit = plan.runs_at_once if plan is not None else None
        holding = False
        if services.limits.overflow == "reject":
            await services.slots.try_acquire(ctx.user_id, ctx.run_id, limit)
            holding = True
        try:
            self._tracker.register(
                run_id=ctx.run_id,
                user_id=ctx.user_id,
                thread_id=ctx.thread_id,
                agent=request.agent,
            )
        except BaseException:
            if holding:
                await services.slots.release(ctx.user_id, ctx.run_id)
            raise
        started = time.perf_counter()
        top = self._emitter.for_agent(agent_class.name, None)
        deadline: asyncio.Timeout | None = None
        try:
            if self._cancel_reason is not None:
                raise asyncio.CancelledError
            if not holding:
                await services.slots.acquire(ctx.user_id, ctx.run_id, limit)
                holding = True
            if plan is not None:
                plan.check_agent(request.agent)
                if services.admission is not None:
                    await services.admission(ctx, plan)
            record = self._tracker.transition(ctx.run_id, ExecutionState.STARTING)
            if services.start_hook is not None:
                await self._started(services.start_hook, record.started_wall)
            await top.emit(EventType.AGENT_STARTED, {"input_message_id": request.input_message_id})
            self._tracker.transition(ctx.run_id, ExecutionState.RUNNING)
            async with asyncio.timeout(self._tracker.run_timeout) as deadline:
                answer = await self._invoke(request.agent, request.input, request.history, ctx, top)
            self._tracker.transition(ctx.run_id, ExecutionState.COMPLETING)
            content = await self._finish_answer(top, answer)
            if services.completion_hook is not None:
                await services.completion_hook(ctx, self.message_id, content)
            duration = _ms_since(started)
            await top.emit(
                EventType.AGENT_COMPLETED,
                {
                    "message": {"id": self.message_id, "role": "assistant", "content": content},
                    "duration_ms": duration,
                    "usage": self._meter.as_dict(),
                },
            )
            self._tracker.transition(ctx.run_id, ExecutionState.COMPLETED)
            return self._outcome(ExecutionState.COMPLETED, started, content=content)
        except asyncio.CancelledError:
            outcome = await self._end_interrupted(top, started)
            if self._cancel_reason is None and not self._expired:
                raise  # cancelled by the task's owner: report, then honour the cancellation
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return outcome
        except TimeoutError as exc:
            if deadline is not None and deadline.expired():
                message = f"run exceeded the run timeout of {self._tracker.run_timeout:g}s"
                error = RunTimeoutError(message).to_dict()
                return await self._end(top, ExecutionState.TIMEOUT, started, error=error)
            return await self._end_failed(top, started, exc)
        except Exception as exc:
            return await self._end_failed(top, started, exc)
        finally:
            if holding:
                await self._count_usage()
                await services.slots.release(ctx.user_id, ctx.run_id)

    async def _count_usage(self) -> None:
        hook = self._services.usage_hook
        tokens = self._meter.prompt_tokens + self._meter.completion_tokens
        if hook is None or tokens <= 0:
            return
        try:
            await hook(self.context, tokens)
        except Exception:
            logger.warning("run %s: its token usage could not be counted", self.run_id)

    async def _started(self, hook: StartHook, started: datetime | None) -> None:
        try:
            await hook(self.context, started or datetime.now(UTC))
        except Exception:
            logger.warning("run %s: its start could not be recorded", self.run_id, exc_info=True)

    async def _invoke(
        self,
        name: str,
        text: str,
        history: Sequence[ChatMessage],
        context: UserExecutionContext,
        emitter: AgentEmitter,
    ) -> str:
        """Run agent ``name`` with a fresh instance, dispatcher and LLM client (traced as
        ``invoke_agent <name>``)."""
        services = self._services
        agent = self._agent_factory.create(name)
        registry = self._agent_factory.registry
        dispatcher = ToolDispatcher(
            context=context,
            tools=registry.tools_for(type(agent)),
            emitter=emitter,
            rate_limiter=services.tool_rate_limiter,
            default_timeout=services.limits.tool_timeout,
            resources=services.resources,
            processes=services.processes,
            plan=self.plan,
            tracing=services.tracing,
        )

        async def call_agent(sub_agent: str, sub_input: str) -> str:
            return await self._call_sub_agent(context, emitter.agent, sub_agent, sub_input)

        run_context = AgentRunContext(
            user=context,
            input=text,
            history=tuple(history),
            llm=self._meter.wrap(services.llm.client(context), services.tracing),
            tools=dispatcher,
            emitter=emitter,
            agents=registry.agents
            if self.plan is None
            else {n: cls for n, cls in registry.agents.items() if self.plan.allows_agent(n)},
            call_agent_fn=call_agent,
        )
        attributes: dict[str, str | int] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": name,
            "atoll.depth": context.depth,
        }
        with services.tracing.span(f"invoke_agent {name}", attributes):
            try:
                answer = await agent.run(run_context)
            finally:
                await dispatcher.aclose()  # what its tool calls opened (MCP sessions) ends too
        if not isinstance(answer, str):
            raise AtollError(f"agent {name} returned {type(answer).__name__}, not str")
        return answer

    async def _call_sub_agent(
        self, parent_context: UserExecutionContext, parent: str, name: str, text: str
    ) -> str:
        """Run a sub-agent under a child context; its events carry its name and parent."""
        try:
            self._agent_factory.registry.agent(name)
            if self.plan is not None:
                self.plan.check_agent(name)
            child = parent_context.child(f"agent:{name}")
        except (AtollError, InvalidContextError) as exc:
            raise SubAgentError(name, exc.to_dict()) from None
        emitter = self._emitter.for_agent(name, parent)
        input_message_id = self._request.input_message_id if self._request else None
        started_data: dict[str, Any] = {
            "input_message_id": input_message_id,
            "request_id": child.request_id,
        }
        if self._request is None or text != self._request.input:
            started_data["task"] = preview(text)  # the user's own message is referenced, not copied
        await emitter.emit(EventType.AGENT_STARTED, started_data)
        started = time.perf_counter()
        try:
            answer = await self._invoke(name, text, (), child, emitter)
        except (asyncio.CancelledError, RunClosedError):
            raise
        except Exception as exc:
            error = _error_dict(exc)
            await emitter.emit(EventType.AGENT_ERROR, {"state": "failed", **error})
            raise SubAgentError(name, error) from None
        await emitter.emit(
            EventType.AGENT_COMPLETED,
            {
                "message": {"id": new_id("msg"), "role": "assistant", "content": answer},
                "duration_ms": _ms_since(started),
            },
        )
        return answer

    # -- endings -------------------------------------------------------------

    async def _finish_answer(self, top: AgentEmitter, answer: str) -> str:
        """Make the streamed text and the stored answer the same text, all of it logged."""
        streamed = top.streamed_text
        if answer.startswith(streamed):
            rest = answer[len(streamed) :]
            if rest:
                await top.delta(rest)
        else:
            logger.warning(
                "run %s: agent returned text that differs from what it streamed", self.run_id
            )
            answer = streamed
        await top.flush()  # a delta that could not be logged fails the run here
        return answer

    async def _end_interrupted(self, top: AgentEmitter, started: float) -> RunOutcome:
        record = self._tracker.get(self.run_id)
        if record.state.is_terminal:  # the monitor got there first: DEAD or TIMEOUT
            return await self._end(top, record.state, started, error=record.error)
        if self._cancel_reason is not None:
            return await self._end(
                top, ExecutionState.CANCELLED, started, reason=self._cancel_reason
            )
        return await self._end(top, ExecutionState.CANCELLED, started, reason=INTERRUPTED)

    async def _end_failed(self, top: AgentEmitter, started: float, exc: Exception) -> RunOutcome:
        if not isinstance(exc, AtollError):
            logger.error("run %s failed", self.run_id, exc_info=exc)
        return await self._end(top, ExecutionState.FAILED, started, error=_error_dict(exc))

    async def _end(
        self,
        top: AgentEmitter,
        state: ExecutionState,
        started: float,
        *,
        error: Mapping[str, Any] | None = None,
        reason: str | None = None,
    ) -> RunOutcome:
        """Move to a terminal state (unless already there) and emit the one terminal event."""
        record = self._tracker.get(self.run_id)
        if record.state.is_alive:
            if not record.state.can_transition_to(state):
                error = RunInterruptedError(f"run interrupted while {record.state.value}").to_dict()
                state = ExecutionState.FAILED
            self._tracker.transition(self.run_id, state, error=dict(error) if error else None)
        else:
            state = record.state
            error = record.error or error
        if state is ExecutionState.CANCELLED:
            ending = Ending.cancelled(reason or "cancelled")
        else:
            ending = Ending.of_error(state, error)
        if not self._emitter.closed:
            try:
                await asyncio.shield(top.emit(ending.event_type, ending.data))
            except Exception:
                logger.exception("run %s: could not emit its terminal event", self.run_id)
        return self._outcome(state, started, error=error if ending.error is not None else None)

    def _outcome(
        self,
        state: ExecutionState,
        started: float,
        *,
        content: str | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> RunOutcome:
        self.outcome = RunOutcome(
            run_id=self.run_id,
            state=state,
            message_id=self.message_id,
            content=content,
            error=dict(error) if error else None,
            usage=self._meter.as_dict(),
            duration_ms=_ms_since(started),
        )
        return self.outcome


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _error_dict(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, SubAgentError):
        return {"code": exc.code, "message": exc.message, "agent": exc.agent}
    if isinstance(exc, AtollError):
        return {"code": exc.code, "message": exc.message}
    return {
        "code": INTERNAL_ERROR,
        "message": f"the agent failed unexpectedly ({type(exc).__name__})",
    }
