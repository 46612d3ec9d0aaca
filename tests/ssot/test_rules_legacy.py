"""The patterns `atoll ssot scan` missed on a real legacy platform (issue 15), one small
codebase each: singletons through ``__new__`` and registries, bypass flags read through
any environment accessor, hand-decoded tokens, factory bypasses through aliases,
``cls(...)`` and re-exports, concepts defined by assignment, namesakes and services."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from atoll.ssot.config import load_config
from atoll.ssot.rules import Finding
from atoll.ssot.scanner import scan

pytestmark = pytest.mark.ssot


def findings(root: Path, files: dict[str, str], config: str = "") -> list[Finding]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        '[tool.atoll.ssot]\npaths = ["app"]\n' + textwrap.dedent(config)
    )
    for relative, source in {"app/__init__.py": "", **files}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"))
    return scan(load_config(root), use_cache=False, jobs=1).findings


def keys(found: list[Finding]) -> set[tuple[str, str, str]]:
    return {(f.rule, f.file.removeprefix("app/"), f.symbol) for f in found}


def test_singletons_through_new_and_module_registries(tmp_path: Path) -> None:
    found = findings(
        tmp_path,
        {
            "app/config.py": """
                class Config:
                    _instance = None

                    def __new__(cls):
                        if cls._instance is None:
                            cls._instance = super().__new__(cls)
                        return cls._instance
                """,
            "app/plain.py": """
                class Point:
                    def __new__(cls, x):
                        return super().__new__(cls)
                """,
            "app/registry.py": """
                import weakref

                LIVE = weakref.WeakSet()


                def track(connection):
                    LIVE.add(connection)
                """,
        },
    )
    assert keys(found) == {
        ("SSOT004", "config.py", "Config"),
        ("SSOT004", "registry.py", "LIVE"),
    }


def test_one_singleton_behind_global_is_one_finding_with_every_place(tmp_path: Path) -> None:
    found = findings(
        tmp_path,
        {
            "app/pool.py": """
                import threading

                _pool = None
                _lock = threading.Lock()


                def get_pool():
                    global _pool
                    if _pool is None:
                        _pool = object()
                    return _pool


                def reset_pool():
                    global _pool
                    _pool = None


                def close_pool():
                    global _pool
                    _pool = None
                """,
        },
    )
    assert [(f.rule, f.symbol) for f in found] == [("SSOT004", "_pool")]
    assert "3 function(s): get_pool (line 8), reset_pool (line 15), close_pool" in (
        found[0].message
    )
    assert found[0].related == (("app/pool.py", 15), ("app/pool.py", 20))


def test_bypass_flags_read_through_any_environment_accessor(tmp_path: Path) -> None:
    found = findings(
        tmp_path,
        {
            "app/settings.py": """
                import os

                from app import env

                DEMO_MODE = env.get("DEMO_MODE")
                SKIP_AUTH = os.getenv("SKIP_AUTH", "false")
                LOG_LEVEL = env.get("LOG_LEVEL", "1")


                def user_for(request):
                    if env.get("DEMO_MODE", "1") == "1":
                        return "demo"
                    if os.environ.get("MOCK_AUTH", default="true"):
                        return "mock"
                    return None
                """,
            "app/env.py": "import os\n\n\ndef get(name, default=None):\n"
            "    return os.environ.get(name, default)\n",
        },
        config='env_accessors = ["app.env.get"]\n',
    )
    flags = sorted((f.symbol, f.line, "defaults to ON" in f.message) for f in found)
    assert flags == [
        ("DEMO_MODE", 5, False),
        ("DEMO_MODE", 11, True),
        ("MOCK_AUTH", 13, True),
        ("SKIP_AUTH", 6, False),
    ]
    assert {f.rule for f in found} == {"SSOT006"}


def test_hand_decoded_tokens_and_validators_outside_the_auth_modules(tmp_path: Path) -> None:
    found = findings(
        tmp_path,
        {
            "app/auth.py": """
                def verify_token(token):
                    return token
                """,
            "app/middleware.py": """
                import base64
                import json


                def user_of(header):
                    token = header.removeprefix("Bearer ")
                    payload = base64.urlsafe_b64decode(token.split(".")[1] + "==")
                    return json.loads(payload)["sub"]


                class Guard:
                    def validate_token(self, token):
                        return True
                """,
            "app/files.py": """
                import base64


                def content(blob):
                    return base64.b64decode(blob)
                """,
        },
        config='auth_modules = ["app.auth"]\n',
    )
    assert keys(found) == {
        ("SSOT006", "middleware.py", "base64.urlsafe_b64decode"),
        ("SSOT006", "middleware.py", "validate_token"),
    }


FACTORY = """
[tool.atoll.ssot.factory_only]
"app.engine.core.UserExecutionEngine" = ["app.engine.factory"]
"""
ENGINE = {
    "app/engine/__init__.py": "from app.engine.core import UserExecutionEngine\n",
    "app/engine/core.py": """
        class UserExecutionEngine:
            def __init__(self, user):
                self.user = user

            @classmethod
            def for_user(cls, user):
                return cls(user)
        """,
    "app/engine/factory.py": """
        from app.engine.core import UserExecutionEngine


        def build(user):
            return UserExecutionEngine(user)
        """,
    "app/handlers.py": """
        from app.engine import UserExecutionEngine
        from app.engine.core import UserExecutionEngine as Engine

        Builder = Engine


        def direct(user):
            return UserExecutionEngine(user)


        def aliased(user):
            return Builder(user)
        """,
}


def test_factory_bypasses_through_re_exports_aliases_and_cls(tmp_path: Path) -> None:
    found = findings(tmp_path / "allowed", ENGINE, FACTORY)
    assert sorted((f.file, f.line) for f in found if f.rule == "SSOT005") == [
        ("app/handlers.py", 8),
        ("app/handlers.py", 12),
    ]
    strict = findings(tmp_path / "strict", ENGINE, "factory_classmethods = false\n" + FACTORY)
    assert ("app/engine/core.py", 7) in {(f.file, f.line) for f in strict if f.rule == "SSOT005"}


def test_duplicates_by_identity_assignment_namesakes_and_services(tmp_path: Path) -> None:
    found = findings(
        tmp_path,
        {
            "app/ws/__init__.py": "",
            "app/ws/manager.py": """
                class WebSocketManager:
                    def send(self, frame):
                        pass
                """,
            "app/ws/executor.py": """
                class ConnectionExecutor:
                    def send(self, frame):
                        pass


                WebSocketManager = ConnectionExecutor
                """,
            "app/ws/compat.py": """
                from app.ws import manager

                Manager = manager.WebSocketManager
                """,
            "app/billing/__init__.py": "",
            "app/billing/config.py": """
                class ServiceConfig:
                    currency = "EUR"

                    def invoice_day(self):
                        return 1
                """,
            "app/search/__init__.py": "",
            "app/search/config.py": """
                class ServiceConfig:
                    index = "main"

                    def shards(self):
                        return 3
                """,
            "app/search/status.py": "class Status:\n    def ok(self):\n        return True\n",
            "app/billing/status.py": "class Status:\n    def ok(self):\n        return True\n",
        },
        config='[tool.atoll.ssot.boundaries]\nbilling = ["app.billing"]\nsearch = ["app.search"]\n',
    )
    assert keys(found) == {
        ("SSOT001", "ws/manager.py", "WebSocketManager"),
        ("SSOT001", "ws/executor.py", "WebSocketManager"),
    }  # ServiceConfig: namesakes; Status: one per service; Manager: the same class
    related = {f.file: f.related for f in found}
    assert related["app/ws/manager.py"] == (("app/ws/executor.py", 6),)


def test_the_canonical_module_may_import_from_its_implementation(tmp_path: Path) -> None:
    found = findings(
        tmp_path,
        {
            "app/state/__init__.py": "from app.state.impl import RunState\n",
            "app/state/impl.py": "class RunState:\n    pass\n",
            "app/user.py": "from app.state.impl import RunState\n",
        },
        config='[tool.atoll.ssot.canonical]\n"app.state.RunState" = "app.state"\n',
    )
    assert keys(found) == {("SSOT003", "user.py", "RunState")}
