"""Testing agents and tools in-process: ``run_agent`` and a ``ScriptedModel``.

For plugin authors (docs/extending.md)::

    from atoll.testing import ScriptedModel, run_agent, say, call_tool

    async def test_my_agent() -> None:
        run = await run_agent("wordsmith", "two words", plugins=["my_plugin"])
        assert run.state == "completed" and "2 words" in run.answer

    async def test_with_a_scripted_model() -> None:
        model = ScriptedModel(call_tool("calculator", expression="6*7"), say("42"))
        run = await run_agent("assistant", "6*7?", model=model)
        assert run.tool_results()[0].result["value"] == 42
        assert model.calls[1][-1].role == "tool"  # what the model was sent

The run goes through the real engine: a per-run context, a fresh agent and tool
dispatcher, the nine-state lifecycle, the limits, and exactly one terminal event;
only the database and the network are left out (an in-memory log and bus).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from atoll.bus.memory import InMemoryEventBus, InMemoryRunEventLog
from atoll.runtime.agents.base import AgentRegistry
from atoll.runtime.builtins import builtin_registry
from atoll.runtime.context import UserExecutionContext
from atoll.runtime.engine import RunRequest
from atoll.runtime.events import EventRecorder, EventType, RunEvent
from atoll.runtime.factory import ExecutionEngineFactory
from atoll.runtime.ids import new_id
from atoll.runtime.limits import RuntimeLimits
from atoll.runtime.llm.base import (
    ChatMessage,
    LLMChunk,
    LLMClient,
    LLMProvider,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)
from atoll.runtime.llm.offline import OfflineProvider
from atoll.runtime.plugins import load_plugins
from atoll.runtime.tools.base import ToolResult
from atoll.runtime.tools.knowledge import KnowledgeBase

__all__ = [
    "AgentRun",
    "ScriptedModel",
    "call_tool",
    "run_agent",
    "say",
    "think",
]

Reply = Sequence[LLMChunk]
"""What the model answers to one call: text, reasoning, tool calls (and usage)."""


def say(text: str) -> Reply:
    """A reply that is ``text``."""
    return (TextDelta(text), Usage(len(text.split()), len(text.split())))


def think(text: str) -> ReasoningDelta:
    """Visible reasoning, to put in a reply (``(think("…"), *say("…"))``)."""
    return ReasoningDelta(text)


def call_tool(name: str, /, **arguments: Any) -> Reply:
    """A reply that calls tool ``name`` with ``arguments``."""
    return (ToolCall(new_id("call"), name, orjson.dumps(arguments).decode()), Usage(1, 1))


class ScriptedModel:
    """A model (an ``LLMProvider``) that answers each call with the next scripted reply.

    ``calls`` records the messages of every call, in order, so a test can check what
    the agent sent. A call past the end of the script fails the run with a clear error.
    """

    name = "scripted"

    def __init__(self, *replies: Reply | str) -> None:
        self._replies = [say(r) if isinstance(r, str) else tuple(r) for r in replies]
        self._next = itertools.count()
        self.calls: list[list[ChatMessage]] = []
        self.tools_offered: list[list[str]] = []

    def client(self, context: UserExecutionContext) -> LLMClient:
        """A client sharing this script."""
        return _ScriptedClient(self)

    async def aclose(self) -> None:
        """Nothing to release."""

    def reply(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> Reply:
        """The next reply (and record the call)."""
        index = next(self._next)
        self.calls.append(list(messages))
        self.tools_offered.append([t.name for t in tools])
        if index >= len(self._replies):
            raise AssertionError(
                f"the scripted model was called {index + 1} times; its script has "
                f"{len(self._replies)} replies"
            )
        return self._replies[index]


class _ScriptedClient:
    model = "scripted"

    def __init__(self, model: ScriptedModel) -> None:
        self._model = model

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice | None = None,
    ) -> AsyncIterator[LLMChunk]:
        for chunk in self._model.reply(messages, tools):
            await asyncio.sleep(0)  # a real stream yields to the loop between chunks
            yield chunk


@dataclass(frozen=True)
class AgentRun:
    """How one ``run_agent`` went: the final state, the answer and every event."""

    run_id: str
    state: str
    """``completed``, ``failed``, ``timeout``, ``cancelled`` …"""
    answer: str | None
    error: Mapping[str, Any] | None
    usage: Mapping[str, int]
    events: list[RunEvent] = field(repr=False)

    def of_type(self, kind: EventType | str) -> list[RunEvent]:
        """The events of one type, in order."""
        return [e for e in self.events if e.type == EventType(kind)]

    @property
    def types(self) -> list[str]:
        """The event types in order."""
        return [e.type.value for e in self.events]

    def tool_results(self) -> list[ToolResult]:
        """The tool calls the run made, as their results (``tool_completed`` events)."""
        return [
            ToolResult(
                call_id=e.data["call_id"],
                tool=e.data["tool"],
                ok=e.data["ok"],
                result=e.data.get("result"),
                error=e.data.get("error"),
                duration_ms=e.data.get("duration_ms", 0.0),
            )
            for e in self.of_type(EventType.TOOL_COMPLETED)
        ]

    @property
    def thinking(self) -> list[str]:
        """The ``agent_thinking`` texts, in order."""
        return [str(e.data.get("text", "")) for e in self.of_type(EventType.AGENT_THINKING)]


async def run_agent(
    agent: str,
    message: str,
    *,
    plugins: Iterable[str] = (),
    registry: AgentRegistry | None = None,
    model: LLMProvider | None = None,
    history: Sequence[ChatMessage] = (),
    plan: str = "free",
    roles: Iterable[str] = (),
    user_id: str | None = None,
    limits: RuntimeLimits | None = None,
    resources: Mapping[type, object] | None = None,
) -> AgentRun:
    """Run ``agent`` on ``message`` in-process and return how it went.

    The registry is Atoll's built-ins plus ``plugins`` (module names, loaded like
    ``ATOLL_PLUGINS``: their ``register(registry)``), unless ``registry`` is given.
    The model is the offline one unless ``model`` is (a ``ScriptedModel``, or any
    ``LLMProvider``). ``plan`` and ``roles`` are the user's, for tool gating.
    """
    if registry is None:
        registry = builtin_registry()
        load_plugins(registry, plugins, use_entry_points=False)
    log = InMemoryRunEventLog()
    factory = ExecutionEngineFactory(
        registry=registry,
        llm=model or OfflineProvider(),
        recorder=EventRecorder(log, InMemoryEventBus()),
        limits=limits or RuntimeLimits(monitor_interval=0.05),
        resources=resources if resources is not None else {KnowledgeBase: KnowledgeBase()},
    )
    context = UserExecutionContext(
        user_id=user_id or new_id("usr"),
        thread_id=new_id("thr"),
        run_id=new_id("run"),
        request_id=new_id("req"),
        plan=plan,
        roles=frozenset(roles),
    )
    async with factory:
        outcome = await factory.run(
            context, RunRequest(agent, message, new_id("msg"), history=tuple(history))
        )
    events = await log.read(context.run_id, user_id=context.user_id)
    return AgentRun(
        run_id=outcome.run_id,
        state=outcome.state.value,
        answer=outcome.content,
        error=outcome.error,
        usage=dict(outcome.usage),
        events=events,
    )
