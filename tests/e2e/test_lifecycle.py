"""Graceful shutdown and the operator commands."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets

from atoll.client import AtollClient, AtollSocket
from atoll.runtime.events import RunEvent
from atoll.server.serve import running_server
from atoll.store.db import Database, sqlite_url
from atoll.store.event_log import DatabaseRunEventLog

from serving import PASSWORD, ServeProcess, make_settings
from support import until

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


async def test_sigterm_exits_within_one_grace_and_sse_streams_end_cleanly(
    tmp_path: Path,
) -> None:
    # R4: one grace period in all, SSE streams end with their run's terminal event (or, for
    # a run still queued, a reconnect hint: it runs after the restart), no traceback.
    grace = 2.0
    server = ServeProcess(
        tmp_path / "data", ATOLL_SHUTDOWN_GRACE=str(grace), ATOLL_OFFLINE_TOKEN_DELAY="3"
    )
    server.start()
    try:
        client = AtollClient(server.url)
        await client.register("sigterm@example.com", PASSWORD)
        long_runs = [(await client.chat("hello", agent="assistant"))["run"]["id"] for _ in range(3)]
        other = (await client.chat("What is 2+2?", agent="assistant"))["run"]["id"]
        opened = [asyncio.Event() for _ in range(4)]
        streams = [
            asyncio.create_task(sse_lines(client, run, opened=event))
            for run, event in zip([*long_runs, other], opened, strict=True)
        ]

        async def going() -> bool:  # every stream open, every run running
            states = [(await client.request("GET", f"/runs/{run}"))["state"] for run in long_runs]
            return all(event.is_set() for event in opened) and states == ["running"] * 3

        await until(going, within=30, what="the runs running and their streams open")
        code = await asyncio.to_thread(server.stop)  # waits (up to 60 s) for the exit
        assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it is done
        ends = []
        for stream in streams[:3]:
            lines = await asyncio.wait_for(stream, 30)
            ends.append(json.loads(next(x for x in reversed(lines) if x.startswith("data: "))[6:]))
        # An answer takes 3 s a word: the long runs were cut at the grace, not waited for.
        assert [(end["type"], end["data"]["reason"]) for end in ends] == [
            ("agent_cancelled", "shutdown")
        ] * 3
        # The fourth waited for a slot: still queued, its stream told to reconnect, and it
        # runs after the restart instead of being lost with the process.
        queued = await asyncio.wait_for(streams[3], 30)
        assert "retry: 1000" in queued and not any(x.startswith("data: ") for x in queued)
        log = server.log_text()
        assert "Traceback" not in log and "Exception in ASGI application" not in log
        server.start()
        await client.login("sigterm@example.com", PASSWORD)
        events = [event async for event in client.stream(other)]
        assert events[-1]["type"] == "agent_completed"
    finally:
        server.kill()


async def sse_lines(
    client: AtollClient, run_id: str, *, opened: asyncio.Event | None = None
) -> list[str]:
    """Every line of the run's SSE stream, until the server ends it (``opened`` is set
    once the answer has begun)."""
    lines: list[str] = []
    headers = {"authorization": f"Bearer {client.access_token}"}
    path = f"/api/v1/runs/{run_id}/stream"
    async with (
        httpx.AsyncClient(base_url=client.base_url, timeout=30) as http,
        http.stream("GET", path, headers=headers) as answer,
    ):
        if opened is not None:
            opened.set()
        async for line in answer.aiter_lines():
            lines.append(line)
    return lines
