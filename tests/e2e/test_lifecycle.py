"""Graceful shutdown and the operator commands."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import websockets

from atoll.client import AtollClient, AtollSocket
from atoll.runtime.events import RunEvent
from atoll.server.serve import running_server
from atoll.store.db import Database, sqlite_url
from atoll.store.event_log import DatabaseRunEventLog

from serving import PASSWORD, make_settings

pytestmark = pytest.mark.e2e


async def read_until_closed(socket: AtollSocket) -> None:
    """Read frames until the server closes the socket (ConnectionClosed)."""
    while True:
        await asyncio.wait_for(socket.receive(), 15)


def atoll_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``atoll`` command line."""
    return subprocess.run(
        [sys.executable, "-m", "atoll.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_shutdown_closes_sockets_with_1001_and_ends_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = make_settings(data, offline_token_delay=1.0, shutdown_grace=0.3)
    async with running_server(settings) as (url, server), AtollClient(url) as client:
        await client.register("shutdown@example.com", PASSWORD)
        async with client.connect() as socket:
            ack = await socket.send_message("hello", agent="assistant")
            async for event in socket.run_events(ack["run_id"]):
                if event["type"] == "agent_started":
                    break
            server.should_exit = True
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await read_until_closed(socket)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001
    db = Database(sqlite_url(data))
    events: list[RunEvent] = await DatabaseRunEventLog(db).read(
        ack["run_id"],
        user_id=client.user["id"],  # type: ignore[index]
    )
    await db.dispose()
    assert events[-1].ends_run
    assert events[-1].type.value == "agent_cancelled"
    assert events[-1].data == {"reason": "shutdown"}


async def test_user_create_and_db_upgrade_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    upgrade = await asyncio.to_thread(atoll_cli, "db", "upgrade", "--data-dir", str(data))
    assert upgrade.returncode == 0, upgrade.stderr
    create = await asyncio.to_thread(
        atoll_cli,
        "user",
        "create",
        "ops@example.com",
        "--name",
        "Ops",
        "--plan",
        "pro",
        "--role",
        "admin",
        "--password-stdin",
        "--data-dir",
        str(data),
        stdin=PASSWORD + "\n",
    )
    assert create.returncode == 0, create.stderr
    assert create.stdout.strip().startswith("usr_")
    again = await asyncio.to_thread(
        atoll_cli,
        "user",
        "create",
        "ops@example.com",
        "--password-stdin",
        "--data-dir",
        str(data),
        stdin=PASSWORD + "\n",
    )
    assert again.returncode == 1
    assert "already exists" in again.stderr
    async with running_server(make_settings(data)) as (url, _), AtollClient(url) as client:
        await client.login("ops@example.com", PASSWORD)
        me = await client.request("GET", "/me")
    assert (me["id"], me["plan"], me["roles"], me["name"]) == (
        create.stdout.strip(), "pro", ["admin"], "Ops",
    )  # fmt: skip
