"""A real Atoll server (uvicorn on a free loopback port) and real clients."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from atoll.client import AtollClient
from atoll.config import Settings
from atoll.runtime.ids import new_id
from atoll.server.app import create_app
from atoll.server.serve import AtollServer

PASSWORD = "correct horse battery"


@contextlib.asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[tuple[str, AtollServer]]:
    """Serve ``settings`` on a free port for the duration of the block."""
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=1 << 20,
        timeout_graceful_shutdown=5,
    )
    server = AtollServer(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server exited during start-up")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server in ``data_dir``."""
    return Settings(data_dir=data_dir, **overrides)


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
