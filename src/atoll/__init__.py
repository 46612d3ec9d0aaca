"""Atoll: a multi-tenant AI-agent runtime.

The public API is imported lazily, so ``import atoll`` stays fast and pulls in
neither pydantic, FastAPI, SQLAlchemy nor the openai package.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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
}

__all__ = [
    "Agent",
    "AgentExecutionTracker",
    "AgentFactory",
    "AgentRegistry",
    "ExecutionEngineFactory",
    "ExecutionState",
    "UserExecutionContext",
    "UserExecutionEngine",
    "__version__",
    "tool",
]

if TYPE_CHECKING:
    from atoll.runtime.agents.base import Agent, AgentFactory, AgentRegistry
    from atoll.runtime.context import UserExecutionContext
    from atoll.runtime.engine import UserExecutionEngine
    from atoll.runtime.factory import ExecutionEngineFactory
    from atoll.runtime.state import ExecutionState
    from atoll.runtime.tools.base import tool
    from atoll.runtime.tracker import AgentExecutionTracker


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'atoll' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
