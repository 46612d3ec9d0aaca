"""`atoll ssot scan` on a small legacy codebase built in a temp directory: every rule's
findings exactly — what must be found and what must not."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from atoll.ssot.cli import main
from atoll.ssot.config import load_config
from atoll.ssot.scanner import scan

pytestmark = [pytest.mark.ssot, pytest.mark.unit]

PYPROJECT = """
[tool.atoll.ssot]
paths = ["src"]
exclude = ["src/legacy/generated_*.py"]
auth_modules = ["legacy.auth.tokens"]

[tool.atoll.ssot.canonical]
"legacy.core.state.ExecutionState" = "legacy.core.state"

[tool.atoll.ssot.deprecated]
"legacy.agents.execution_engine:ExecutionEngine" = "legacy.core.engine:UserExecutionEngine"
"legacy.websocket_manager_factory" = "legacy.websocket.manager"

[tool.atoll.ssot.factory_only]
"legacy.core.engine.UserExecutionEngine" = ["legacy.core.factory"]
"""

FILES = {
    "src/legacy/__init__.py": "",
    "src/legacy/core/__init__.py": "from legacy.core.state import ExecutionState\n",
    "src/legacy/core/state.py": """
        from enum import Enum

        class ExecutionState(Enum):
            PENDING = "pending"
            RUNNING = "running"
            DONE = "done"

        MAX_RUNS = 3
        """,
    "src/legacy/core/engine.py": """
        class UserExecutionEngine:
            def __init__(self, user):
                self.user = user
        """,
    "src/legacy/core/factory.py": """
        from legacy.core.engine import UserExecutionEngine

        def build(user):
            return UserExecutionEngine(user)
        """,
    "src/legacy/agents/__init__.py": "",
    "src/legacy/agents/execution_engine.py": """
        class ExecutionEngine:
            pass
        """,
    "src/legacy/agents/status.py": """
        from enum import Enum

        class RunStatus(Enum):
            PENDING = 1
            RUNNING = 2
            DONE = 3
        """,
    "src/legacy/agents/runner.py": """
        from typing import TYPE_CHECKING
        from . import execution_engine as old
        from legacy.core import ExecutionState
        from legacy.core.engine import UserExecutionEngine
        import legacy.websocket_manager_factory as wsm

        if TYPE_CHECKING:
            from legacy.core.state import ExecutionState as Checked

        def run(user):
            engine = UserExecutionEngine(user)
            return old.ExecutionEngine(), engine, ExecutionState.PENDING
        """,
    "src/legacy/websocket_manager_factory.py": "def make():\n    return None\n",
    "src/legacy/state_copy.py": """
        from enum import Enum

        class ExecutionState(Enum):
            PENDING = "pending"
            RUNNING = "running"
            DONE = "done"
        """,
    "src/legacy/singletons.py": """
        import functools
        import os

        from legacy.core.engine import UserExecutionEngine

        _CACHE = {}
        LIMITS = {"runs": 3}
        shared_engine = UserExecutionEngine(None)
        MOCK_AUTH_ENABLED = True
        SKIP_AUTH = os.environ.get("SKIP_AUTH")
        DISABLE_AUTH = False

        class Registry:
            _instance = None

            @classmethod
            def get_instance(cls):
                if cls._instance is None:
                    cls._instance = cls()
                return cls._instance

        @functools.lru_cache
        def settings():
            return {}

        @functools.lru_cache
        def lookup(key):
            return key

        def remember(key, value):
            _CACHE[key] = value

        counter = 0

        def bump():
            global counter
            counter += 1
            return LIMITS["runs"]
        """,
    "src/legacy/auth/__init__.py": "",
    "src/legacy/auth/tokens.py": """
        import jwt

        def decode(token, key):
            return jwt.decode(token, key, algorithms=["HS256"])
        """,
    "src/legacy/api.py": """
        import jwt
        from typing import Protocol

        class Store(Protocol):
            def get(self, key: str) -> str: ...

        def peek(token):
            return jwt.decode(token, options={"verify_signature": False})

        def who(token, key):
            return jwt.decode(token, key, algorithms=["HS256"])
        """,
    "src/legacy/clean.py": """
        from legacy.core.state import ExecutionState

        TIMEOUT = 30
        NAMES = ("a", "b")

        def describe(state: ExecutionState) -> str:
            local = {}
            local["x"] = 1
            return state.value
        """,
    "src/legacy/star.py": """
        from legacy.core.state import *

        try:
            import legacy.websocket_manager_factory as wsm2
        except ImportError:
            wsm2 = None
        """,
    "src/legacy/generated_models.py": "class ExecutionState:\n    pass\n",
    "src/legacy/broken.py": "def oops(:\n",
    "tests/test_things.py": """
        from legacy.core import ExecutionState
        from legacy.core.engine import UserExecutionEngine

        class ExecutionState2:
            pass

        def test_it():
            assert UserExecutionEngine(None)
        """,
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    for relative, source in FILES.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"))
    return tmp_path


def found(project: Path) -> set[tuple[str, str, str]]:
    result = scan(load_config(project), use_cache=False, jobs=1)
    return {(f.rule, f.file.removeprefix("src/legacy/"), f.symbol) for f in result.findings}


def test_every_rule_finds_exactly_what_it_should(project: Path) -> None:
    assert found(project) == {
        # SSOT001: a concept defined twice, and an enum copied under another name
        ("SSOT001", "state_copy.py", "ExecutionState"),
        ("SSOT001", "agents/status.py", "RunStatus"),
        ("SSOT001", "state_copy.py", "ExecutionState"),
        ("SSOT001", "core/state.py", "ExecutionState"),
        # SSOT002: deprecated module (aliased import) and deprecated name through a module alias
        ("SSOT002", "agents/runner.py", "legacy.websocket_manager_factory"),
        ("SSOT002", "agents/runner.py", "ExecutionEngine"),
        ("SSOT002", "star.py", "legacy.websocket_manager_factory"),  # a conditional import
        # SSOT003: a registry symbol imported through a re-export
        ("SSOT003", "agents/runner.py", "ExecutionState"),
        # SSOT004: every kind of shared state, and nothing else
        ("SSOT004", "singletons.py", "shared_engine"),
        ("SSOT004", "singletons.py", "Registry"),
        ("SSOT004", "singletons.py", "settings"),
        ("SSOT004", "singletons.py", "_CACHE"),
        ("SSOT004", "singletons.py", "counter"),
        # SSOT005: the engine built outside its factory
        ("SSOT005", "agents/runner.py", "legacy.core.engine.UserExecutionEngine"),
        ("SSOT005", "singletons.py", "legacy.core.engine.UserExecutionEngine"),
        # SSOT006: bypass switches, unverified decoding, decoding outside the auth module
        ("SSOT006", "singletons.py", "MOCK_AUTH_ENABLED"),
        ("SSOT006", "singletons.py", "SKIP_AUTH"),
        ("SSOT006", "api.py", "jwt.decode"),
    }


def test_details_of_findings(project: Path) -> None:
    result = scan(load_config(project), use_cache=False, jobs=1)
    by_rule = {}
    for finding in result.findings:
        by_rule.setdefault(finding.rule, []).append(finding)
    deprecated = [f for f in by_rule["SSOT002"] if f.symbol == "legacy.websocket_manager_factory"]
    assert deprecated[0].fix == "import legacy.websocket.manager"
    assert deprecated[0].line == 5
    canonical = by_rule["SSOT003"][0]
    assert canonical.fix == "from legacy.core.state import ExecutionState"
    assert "its one home is legacy.core.state" in canonical.message
    api = sorted(f.message for f in by_rule["SSOT006"] if f.file.endswith("api.py"))
    assert len(api) == 2  # the unverified decode and the decode outside the auth module
    assert any("verification off" in m for m in api)
    assert any("outside the auth modules" in m for m in api)
    assert result.syntax_errors == [("src/legacy/broken.py", result.syntax_errors[0][1])]
    assert result.metrics["symbols"]["legacy.core.state.ExecutionState"]["import_paths"] == {
        "legacy.core": 1, "legacy.core.state": 3,
    }  # fmt: skip
    assert result.metrics["fragmentation"] == 1
    assert result.metrics["canonical_usage_pct"] == 75.0


def test_clean_module_tests_protocols_and_constants_are_not_flagged(project: Path) -> None:
    files = {f for _, f, _ in found(project)}
    assert "clean.py" not in files
    assert not any(f.startswith("tests/") for f in files)
    assert not any(symbol in ("Store", "MAX_RUNS", "LIMITS", "DISABLE_AUTH", "lookup")
                   for _, _, symbol in found(project))  # fmt: skip


def test_cli_exit_codes_formats_and_baseline(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", "--root", str(project), "--no-cache"]) == 1
    text = capsys.readouterr().out
    assert "SSOT005 factory-bypass [error]" in text
    assert "canonical import usage: 75.0%" in text

    assert main(["scan", "--root", str(project), "--format", "json", "--jobs", "2"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["counts"]["SSOT004"] == 5
    assert all(len(f["fingerprint"]) == 20 for f in document["findings"])

    assert main(["scan", "--root", str(project), "--format", "sarif"]) == 1
    sarif = json.loads(capsys.readouterr().out)
    assert sarif["version"] == "2.1.0"
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} == {
        "SSOT001", "SSOT002", "SSOT003", "SSOT004", "SSOT005", "SSOT006",
    }  # fmt: skip
    duplicates = [r for r in sarif["runs"][0]["results"] if r["ruleId"] == "SSOT001"]
    assert all(r["relatedLocations"] for r in duplicates)  # the other definitions

    baseline = project / "baseline.json"
    assert main(["scan", "--root", str(project), "--baseline", str(baseline),
                 "--write-baseline"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["scan", "--root", str(project), "--baseline", str(baseline)]) == 0
    assert "0 finding(s)" in capsys.readouterr().out

    # Moving code does not break the baseline; a new violation does.
    singletons = project / "src/legacy/singletons.py"
    singletons.write_text("\n\n\n" + singletons.read_text() + "\nEXTRA = Registry.get_instance()\n"
                          "other_engine = UserExecutionEngine(1)\n")  # fmt: skip
    assert main(["scan", "--root", str(project), "--baseline", str(baseline)]) == 1
    out = capsys.readouterr().out
    assert "other_engine" in out
    reported = [line for line in out.splitlines() if " [error] " in line or " [warning] " in line]
    assert len(reported) == 2  # the new module-level instance and its factory bypass
    assert "SSOT004 shared-state [warning]" in out and "SSOT005 factory-bypass [error]" in out

    # The ratchet only tightens: fixing a finding prunes it from the baseline.
    before = len(json.loads(baseline.read_text())["fingerprints"])
    (project / "src/legacy/state_copy.py").unlink()
    assert main(["scan", "--root", str(project), "--baseline", str(baseline),
                 "--write-baseline"]) == 0  # fmt: skip
    after = json.loads(baseline.read_text())["fingerprints"]
    assert len(after) == before - 2  # the copy: its name and its enum members


@pytest.mark.parametrize(
    ("pyproject", "message"),
    [("[tool.atoll.ssot\n", "not valid TOML"),
     ('[tool.atoll.ssot]\npaths = "src"\n', "paths must be a list"),
     ('[tool.atoll.ssot.severity]\nSSOT009 = "off"\n', "unknown rule"),
     ('[tool.atoll.ssot.severity]\nSSOT001 = "loud"\n', "must be one of"),
     ('[tool.atoll.ssot.factory_only]\n"a.B" = "a.factory"\n', "list of modules")],
)  # fmt: skip
def test_config_errors_are_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pyproject: str, message: str
) -> None:
    (tmp_path / "pyproject.toml").write_text(pyproject)
    assert main(["scan", "--root", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error
    assert "\n" not in error
    assert "Traceback" not in error


def test_severity_override_and_cache(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with (project / "pyproject.toml").open("a") as handle:
        handle.write('\n[tool.atoll.ssot.severity]\nSSOT004 = "off"\nSSOT001 = "warning"\n')
    config = load_config(project)
    cold = scan(config)
    assert (project / ".ssot-cache").is_dir()
    warm = scan(config)
    assert [f.to_dict() for f in warm.findings] == [f.to_dict() for f in cold.findings]
    assert not any(f.rule == "SSOT004" for f in cold.findings)
    assert {f.severity for f in cold.findings if f.rule == "SSOT001"} == {"warning"}


def test_a_module_level_instance_of_a_class_of_the_same_file_is_shared_state(
    tmp_path: Path,
) -> None:
    """Issue 15's three-line reproduction: ``class A`` then ``a = A()`` in one file. The
    call used to resolve to a bare ``A``, which no rule knew as a project class."""
    (tmp_path / "pyproject.toml").write_text('[tool.atoll.ssot]\npaths = ["src"]\n')
    package = tmp_path / "src" / "legacy"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "registry.py").write_text("class A:\n    pass\n\n\na = A()\n")
    assert found(tmp_path) == {("SSOT004", "registry.py", "a")}
