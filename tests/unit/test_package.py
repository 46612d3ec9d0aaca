"""The package surface: lazy public API, light import, console script."""

from __future__ import annotations

import subprocess
import sys

import pytest

import atoll

pytestmark = pytest.mark.unit

PUBLIC = [
    "UserExecutionContext", "ExecutionState", "AgentExecutionTracker", "UserExecutionEngine",
    "ExecutionEngineFactory", "AgentFactory", "AgentRegistry", "Agent", "tool",
    "AgentRunContext", "ToolContext", "ToolResult", "ToolScope", "ToolDispatcher", "ChatMessage",
    "ToolCall", "ToolSpec", "TextDelta", "ReasoningDelta", "Usage", "LLMClient", "LLMProvider",
    "Plan", "AtollError", "ToolError", "SubAgentError",
]  # fmt: skip


def test_public_api_is_importable_from_the_top_level() -> None:
    for name in PUBLIC:
        assert getattr(atoll, name).__name__ == name
    assert set(PUBLIC) <= set(dir(atoll))
    with pytest.raises(AttributeError):
        _ = atoll.NoSuchThing  # type: ignore[attr-defined]


def modules_loaded_by(statement: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of ``candidates`` a fresh interpreter has imported after ``statement``."""
    code = (
        f"import sys\n{statement}\nprint(','.join(m for m in {candidates!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return [m for m in result.stdout.strip().split(",") if m]


def test_import_atoll_is_light() -> None:
    heavy = ("fastapi", "sqlalchemy", "openai", "pydantic", "httpx")
    assert modules_loaded_by("import atoll", heavy) == []


def test_importing_the_runtime_does_not_pull_in_the_openai_package() -> None:
    statement = (
        "from atoll.runtime.factory import ExecutionEngineFactory\n"
        "from atoll.runtime.builtins import builtin_registry\n"
        "from atoll.runtime.llm.offline import OfflineProvider"
    )
    assert modules_loaded_by(statement, ("openai", "pydantic")) == ["pydantic"]


def test_console_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "atoll.cli", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"atoll {atoll.__version__}"
