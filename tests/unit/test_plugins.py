"""Plugins: modules named in ATOLL_PLUGINS add agents and tools; failures name the plugin."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from atoll.errors import ConfigurationError
from atoll.runtime.builtins import builtin_registry
from atoll.runtime.plugins import load_plugins

pytestmark = pytest.mark.unit

GOOD = """
from atoll import Agent, tool

@tool
async def shout(text: str) -> str:
    '''Upper-cases text.'''
    return text.upper()

class Echo(Agent):
    name = "echo"
    description = "Repeats the input."

    async def run(self, run):
        await run.delta(run.input)
        return run.input

def register(registry):
    registry.register_agent(Echo)
    registry.register_tool(shout)
"""


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("atoll_test_plugin")]:
        del sys.modules[name]


def test_plugin_adds_agents_and_tools(plugin_dir: Path) -> None:
    (plugin_dir / "atoll_test_plugin_good.py").write_text(textwrap.dedent(GOOD))
    registry = builtin_registry()
    assert load_plugins(registry, ["atoll_test_plugin_good"], use_entry_points=False) == [
        "atoll_test_plugin_good"
    ]
    assert registry.agent("echo").description == "Repeats the input."
    assert "shout" in registry.tools


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise ImportError('missing dependency')", "could not be imported: ImportError"),
        ("x = 1", "has no register"),
        ("def register(registry):\n    registry.register_tool(42)", "failed to register"),
    ],
)
def test_broken_plugin_stops_with_a_message_naming_it(
    plugin_dir: Path, source: str, message: str
) -> None:
    (plugin_dir / "atoll_test_plugin_bad.py").write_text(source)
    with pytest.raises(ConfigurationError, match=message) as info:
        load_plugins(builtin_registry(), ["atoll_test_plugin_bad"], use_entry_points=False)
    assert "atoll_test_plugin_bad" in str(info.value)


def test_missing_plugin_module(plugin_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="atoll_test_plugin_absent"):
        load_plugins(builtin_registry(), ["atoll_test_plugin_absent"], use_entry_points=False)
