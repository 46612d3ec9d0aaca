"""The package surface: lazy public API, light import, console script."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_defined_once_and_the_changelog_names_it() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert atoll.__version__ == declared  # read from the installed package's metadata
    assert "__version__ =" not in (ROOT / "src" / "atoll" / "__init__.py").read_text()
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"\n## {declared} " in changelog


def test_the_changelog_names_every_schema_change() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    versions = ROOT / "src" / "atoll" / "store" / "migrations" / "versions"
    revisions = sorted(path.name.split("_", 1)[0] for path in versions.glob("[0-9]*.py"))
    assert revisions, versions
    missing = [r for r in revisions if f"Schema **{r}**" not in changelog]
    assert not missing, f"CHANGELOG.md does not name migration(s) {missing}"
