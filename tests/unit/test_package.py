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
]  # fmt: skip


def test_public_api_is_importable_from_the_top_level() -> None:
    for name in PUBLIC:
        assert getattr(atoll, name).__name__ == name
    assert set(PUBLIC) <= set(dir(atoll))
    with pytest.raises(AttributeError):
        _ = atoll.NoSuchThing  # type: ignore[attr-defined]


def test_import_atoll_is_light() -> None:
    code = (
        "import sys, atoll\n"
        "heavy = [m for m in ('fastapi', 'sqlalchemy', 'openai', 'pydantic', 'httpx')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_importing_the_runtime_does_not_pull_in_the_openai_package() -> None:
    code = (
        "import sys\n"
        "from atoll.runtime.factory import ExecutionEngineFactory\n"
        "from atoll.runtime.builtins import builtin_registry\n"
        "from atoll.runtime.llm.offline import OfflineProvider\n"
        "print('openai' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_console_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "atoll.cli", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"atoll {atoll.__version__}"
