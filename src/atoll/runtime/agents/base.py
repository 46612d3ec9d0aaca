"""What an agent is, what it is given for a run, and how agents are registered and made.

An ``AgentRegistry`` holds agent *classes* and ``Tool`` values; an ``AgentFactory``
makes a fresh agent instance for every run and every sub-agent call, so no
state survives from one run (or user) to the next.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from atoll.errors import AgentNotFoundError
from atoll.runtime.context import UserExecutionContext
from atoll.runtime.events import AgentEmitter
from atoll.runtime.llm.base import ChatMessage, LLMClient
from atoll.runtime.tools.base import Tool
from atoll.runtime.tools.dispatcher import ToolDispatcher


class Agent(ABC):
    """Base class of every agent. Subclasses set ``name`` and ``description``.

    ``run`` returns the answer text. The top-level agent streams it with
    ``run.delta`` as it goes; whatever of the returned text was not streamed is
    sent as a final delta, so the stored answer always equals the streamed one.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    specialist: ClassVar[bool] = True
    """Whether a supervisor may delegate to this agent."""
    tools: ClassVar[tuple[str, ...] | None] = None
    """Names of the tools the agent uses; None means every tool the user may call."""

    @abstractmethod
    async def run(self, run: AgentRunContext) -> str:
        """Do the work for one run and return the answer."""


@dataclass(frozen=True, slots=True)
class AgentRunContext:
    """Everything one agent invocation gets: user, input, history, LLM, tools, emitter."""

    user: UserExecutionContext
    input: str
    history: Sequence[ChatMessage]
    llm: LLMClient
    tools: ToolDispatcher
    emitter: AgentEmitter
    agents: Mapping[str, type[Agent]]
    call_agent_fn: Callable[[str, str], Awaitable[str]]

    async def thinking(self, text: str, step: int | None = None) -> None:
        """Show a piece of the agent's reasoning (``agent_thinking``)."""
        await self.emitter.thinking(text, step)

    async def delta(self, text: str) -> None:
        """Stream a piece of the answer (``message_delta``; top-level agent only)."""
        await self.emitter.delta(text)

    async def call_agent(self, name: str, input: str) -> str:
        """Run sub-agent ``name`` on ``input`` under a child context; returns its answer.

        Raises ``SubAgentError`` when the sub-agent fails.
        """
        return await self.call_agent_fn(name, input)


class AgentRegistry:
    """The agent classes and tools one process offers, by name."""

    def __init__(self) -> None:
        self._agents: dict[str, type[Agent]] = {}
        self._tools: dict[str, Tool] = {}

    def register_agent(self, agent: type[Agent]) -> type[Agent]:
        """Add an agent class (usable as a class decorator); names must be unique."""
        if not (isinstance(agent, type) and issubclass(agent, Agent)):
            raise TypeError(f"register_agent takes an Agent subclass, not {agent!r}")
        name = getattr(agent, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{agent.__name__} needs a non-empty class attribute 'name'")
        if not getattr(agent, "description", None):
            raise TypeError(f"{agent.__name__} needs a class attribute 'description'")
        if name in self._agents and self._agents[name] is not agent:
            raise ValueError(f"an agent named {name!r} is already registered")
        self._agents[name] = agent
        return agent

    def register_tool(self, tool: Tool) -> Tool:
        """Add a tool; names must be unique."""
        if not isinstance(tool, Tool):
            raise TypeError(f"register_tool takes a Tool (use @tool), not {tool!r}")
        if tool.name in self._tools and self._tools[tool.name] is not tool:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def register_tools(self, tools: Iterable[Tool]) -> None:
        """Add several tools."""
        for item in tools:
            self.register_tool(item)

    def agent(self, name: str) -> type[Agent]:
        """The agent class called ``name``; ``AgentNotFoundError`` otherwise."""
        try:
            return self._agents[name]
        except KeyError:
            raise AgentNotFoundError(
                f"unknown agent {name!r}", details={"agents": sorted(self._agents)}
            ) from None

    @property
    def agents(self) -> Mapping[str, type[Agent]]:
        """All agent classes by name."""
        return dict(self._agents)

    @property
    def tools(self) -> Mapping[str, Tool]:
        """All tools by name."""
        return dict(self._tools)

    def describe_agents(self) -> list[dict[str, Any]]:
        """``[{name, description}]`` for the ``/agents`` listing."""
        return [
            {"name": name, "description": cls.description}
            for name, cls in sorted(self._agents.items())
        ]

    def tools_for(self, agent: type[Agent]) -> dict[str, Tool]:
        """The tools an agent class may use (before user permissions)."""
        if agent.tools is None:
            return dict(self._tools)
        return {name: self._tools[name] for name in agent.tools if name in self._tools}


class AgentFactory:
    """Creates a fresh agent instance per run (never caches or reuses instances)."""

    def __init__(self, registry: AgentRegistry) -> None:
        self.registry = registry

    def create(self, name: str) -> Agent:
        """A new instance of the agent called ``name``."""
        return self.registry.agent(name)()
