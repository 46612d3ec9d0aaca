"""A real Atoll server (uvicorn on a free loopback port) and real clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from atoll.client import AtollClient
from atoll.config import Settings
from atoll.runtime.ids import new_id

from serving import PASSWORD, make_settings, running_server


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
