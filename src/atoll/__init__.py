"""Atoll: a multi-tenant AI-agent runtime.

The public API is imported lazily, so ``import atoll`` stays fast and pulls in
neither pydantic, FastAPI, SQLAlchemy nor the openai package.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "UserExecutionContext": "atoll.runtime.context",
    "ExecutionState": "atoll.runtime.state",
    "AgentExecutionTracker": "atoll.runtime.tracker",
    "UserExecutionEngine": "atoll.runtime.engine",
    "ExecutionEngineFactory": "atoll.runtime.factory",
    "AgentFactory": "atoll.runtime.agents.base",
    "AgentRegistry": "atoll.runtime.agents.base",
    "Agent": "atoll.runtime.agents.base",
    "tool": "atoll.runtime.tools.base",
    # What a plugin's agents and tools are given and return (docs/extending.md).
    "AgentRunContext": "atoll.runtime.agents.base",
    "ToolContext": "atoll.runtime.tools.base",
    "ToolResult": "atoll.runtime.tools.base",
    "ToolScope": "atoll.runtime.tools.base",
    "ToolDispatcher": "atoll.runtime.tools.dispatcher",
    "ChatMessage": "atoll.runtime.llm.base",
    "ToolCall": "atoll.runtime.llm.base",
    "ToolSpec": "atoll.runtime.llm.base",
    "TextDelta": "atoll.runtime.llm.base",
    "ReasoningDelta": "atoll.runtime.llm.base",
    "Usage": "atoll.runtime.llm.base",
    "LLMClient": "atoll.runtime.llm.base",
    "LLMProvider": "atoll.runtime.llm.base",
    "Plan": "atoll.runtime.plans",
    "AtollError": "atoll.errors",
    "ToolError": "atoll.errors",
    "SubAgentError": "atoll.errors",
}

__all__ = [
    "Agent",
    "AgentExecutionTracker",
    "AgentFactory",
    "AgentRegistry",
    "AgentRunContext",
    "AtollError",
    "ChatMessage",
    "ExecutionEngineFactory",
    "ExecutionState",
    "LLMClient",
    "LLMProvider",
    "Plan",
    "ReasoningDelta",
    "SubAgentError",
    "TextDelta",
    "ToolCall",
    "ToolContext",
    "ToolDispatcher",
    "ToolError",
    "ToolResult",
    "ToolScope",
    "ToolSpec",
    "Usage",
    "UserExecutionContext",
    "UserExecutionEngine",
    "__version__",
    "tool",
]

if TYPE_CHECKING:
    __version__: str
    from atoll.errors import AtollError, SubAgentError, ToolError
    from atoll.runtime.agents.base import Agent, AgentFactory, AgentRegistry, AgentRunContext
    from atoll.runtime.context import UserExecutionContext
    from atoll.runtime.engine import UserExecutionEngine
    from atoll.runtime.factory import ExecutionEngineFactory
    from atoll.runtime.llm.base import (
        ChatMessage,
        LLMClient,
        LLMProvider,
        ReasoningDelta,
        TextDelta,
        ToolCall,
        ToolSpec,
        Usage,
    )
    from atoll.runtime.plans import Plan
    from atoll.runtime.state import ExecutionState
    from atoll.runtime.tools.base import ToolContext, ToolResult, ToolScope, tool
    from atoll.runtime.tools.dispatcher import ToolDispatcher
    from atoll.runtime.tracker import AgentExecutionTracker


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _installed_version()
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'atoll' has no attribute {name!r}")
    return getattr(import_module(module), name)


def _installed_version() -> str:
    """The version of the installed distribution: ``pyproject.toml``'s ``version`` is the one
    definition, and the package metadata carries it (reinstall after changing it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atoll")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


def __dir__() -> list[str]:
    return sorted(__all__)
