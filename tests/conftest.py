"""Shared fixtures: a real in-process runtime (factory, in-memory event log and bus), a real
server (``server``, ``new_client``), the app in the test's event loop (``app``,
``app_client``); the markers of the slow tiers (docs/testing.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from atoll.bus.memory import InMemoryEventBus, InMemoryRunEventLog
from atoll.client import AtollClient
from atoll.config import Settings
from atoll.runtime.agents.base import AgentRegistry
from atoll.runtime.builtins import builtin_registry
from atoll.runtime.engine import CompletionHook
from atoll.runtime.events import EventRecorder
from atoll.runtime.factory import ExecutionEngineFactory
from atoll.runtime.ids import new_id
from atoll.runtime.limits import RuntimeLimits
from atoll.runtime.llm.base import LLMProvider
from atoll.runtime.llm.offline import OfflineProvider
from atoll.runtime.tools.knowledge import KnowledgeBase
from atoll.server.serve import running_server

from inprocess import InProcessApp, running_app
from serving import PASSWORD, build_template, make_settings
from support import Runtime

TESTS = Path(__file__).resolve().parent
SLOW_DIRECTORIES = {"browser", "scale_out", "terminal"}
"""Chromium; PostgreSQL, Redis and processes; ``atoll chat`` in a terminal."""
REAL_SERVER_FIXTURES = {"server", "new_client", "postgres", "browser"}
"""Fixtures that start a real server (uvicorn on a socket, PostgreSQL) or Chromium."""


def pytest_sessionstart(session: pytest.Session) -> None:
    """Migrate the SQLite template the test servers start from (serving.TEMPLATE)."""
    build_template()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tiers (docs/testing.md): ``inprocess`` for tests of the in-process ``app``;
    ``slow`` for whatever needs a real server, process, Chromium or PostgreSQL: the slow
    directories, the fixtures that start one, the PostgreSQL variant of ``database``, and
    every e2e test that is not in-process (a new test there is slow until it says
    otherwise, so the fast tier stays fast); ``browser`` and ``scale_out`` by directory."""
    for item in items:
        if not item.path.is_relative_to(TESTS):
            continue
        directory = item.path.relative_to(TESTS).parts[0]
        names = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "app" in names:
            item.add_marker(pytest.mark.inprocess)
        if directory == "browser":
            item.add_marker(pytest.mark.browser)
        if directory == "scale_out":
            item.add_marker(pytest.mark.scale_out)
        if (
            directory in SLOW_DIRECTORIES
            or names & REAL_SERVER_FIXTURES
            or params.get("database") == "postgresql"
            or (directory == "e2e" and item.get_closest_marker("inprocess") is None)
        ):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def build_runtime() -> Callable[..., ExecutionEngineFactory]:
    """Returns a function that builds a factory on fresh in-memory log and bus."""

    def build(
        *,
        registry: AgentRegistry | None = None,
        llm: LLMProvider | None = None,
        limits: RuntimeLimits | None = None,
        log: InMemoryRunEventLog | None = None,
        bus: InMemoryEventBus | None = None,
        completion_hook: CompletionHook | None = None,
    ) -> Runtime:
        log = log or InMemoryRunEventLog()
        bus = bus or InMemoryEventBus()
        factory = ExecutionEngineFactory(
            registry=registry or builtin_registry(),
            llm=llm or OfflineProvider(),
            recorder=EventRecorder(log, bus),
            limits=limits or RuntimeLimits(monitor_interval=0.05),
            resources={KnowledgeBase: KnowledgeBase()},
            completion_hook=completion_hook,
        )
        return Runtime(factory, log, bus)

    return build  # type: ignore[return-value]


@pytest.fixture
async def runtime(build_runtime: Callable[..., Runtime]) -> AsyncIterator[Runtime]:
    """A started runtime with the built-in agents and the offline model."""
    rt = build_runtime()
    async with rt.factory:
        yield rt


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    return lambda **overrides: make_settings(tmp_path / "data", **overrides)


@pytest.fixture
async def server(settings_factory: Callable[..., Settings]) -> AsyncIterator[str]:
    """The base URL of a running server with default settings."""
    async with running_server(settings_factory()) as (url, _):
        yield url


@pytest.fixture
async def new_client(server: str) -> AsyncIterator[Callable[..., Any]]:
    """A function that registers a fresh user and returns its logged-in client."""
    clients: list[AtollClient] = []

    async def make(email: str | None = None) -> AtollClient:
        client = AtollClient(server)
        clients.append(client)
        await client.register(email or f"u{new_id('usr')[4:14].lower()}@example.com", PASSWORD)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def app(settings_factory: Callable[..., Settings]) -> AsyncIterator[InProcessApp]:
    """The app with default settings in this test's event loop, reached with no socket
    (REST and SSE; WebSockets need ``server``)."""
    async with running_app(settings_factory()) as running:
        yield running


@pytest.fixture
async def app_client(app: InProcessApp) -> AsyncIterator[Callable[..., Any]]:
    """``new_client`` for the in-process ``app``: registers a fresh user, returns its client."""
    clients: list[AtollClient] = []

    async def make(email: str | None = None) -> AtollClient:
        client = app.client()
        clients.append(client)
        await client.register(email or f"u{new_id('usr')[4:14].lower()}@example.com", PASSWORD)
        return client

    yield make
    for client in clients:
        await client.aclose()
