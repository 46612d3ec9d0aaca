"""The built-in agents and tools, registered the same way a plugin registers its own."""

from __future__ import annotations

from atoll.runtime.agents.assistant import AssistantAgent
from atoll.runtime.agents.base import AgentRegistry
from atoll.runtime.agents.supervisor import SupervisorAgent
from atoll.runtime.tools.calculator import calculator
from atoll.runtime.tools.clock import current_time
from atoll.runtime.tools.knowledge import knowledge_search


def register(registry: AgentRegistry) -> None:
    """Add ``assistant``, ``supervisor``, ``calculator``, ``current_time``, ``knowledge_search``."""
    registry.register_agent(AssistantAgent)
    registry.register_agent(SupervisorAgent)
    registry.register_tools([calculator, current_time, knowledge_search])


def builtin_registry() -> AgentRegistry:
    """A new registry holding the built-in agents and tools."""
    registry = AgentRegistry()
    register(registry)
    return registry
