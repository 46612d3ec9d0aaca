"""Exactly once at the edges of a socket's life: no stored run left unstarted, no early event.

Each test drives a real server with raw ``websockets`` clients, closing sockets
at the moments the chaos runs found (right after a send, before the acks).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from atoll.client import AtollClient, ends_run
from atoll.server.serve import running_server

from serving import PASSWORD, make_settings
from support import until

NOTICES = {"message_created", "thread_created", "thread_updated", "thread_deleted"}
pytestmark = [pytest.mark.e2e]

TERMINAL = {"cancelled", "completed", "failed", "timeout", "dead"}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[str]:
    settings = make_settings(tmp_path / "data", offline_token_delay=0.01, messages_per_minute=1000)
    async with running_server(settings) as (url, _):
        yield url


async def socket_for(url: str, token: str) -> websockets.ClientConnection:
    ws = await websockets.connect(url.replace("http", "ws") + "/api/v1/ws")
    await ws.send(json.dumps({"type": "auth", "token": token}))
    assert json.loads(await ws.recv())["type"] == "connection_established"
    return ws


async def all_runs(client: AtollClient) -> list[dict[str, Any]]:
    runs = []
    for thread in (await client.request("GET", "/threads?limit=100"))["items"]:
        messages = await client.request("GET", f"/threads/{thread['id']}/messages")
        for message in messages["items"]:
            if message["role"] == "user":
                runs.append(await client.request("GET", f"/runs/{message['run_id']}"))
    return runs


async def test_messages_sent_right_before_a_clean_close_all_run(server: str) -> None:
    # R1: two messages back to back, then close without reading the acks.
    client = AtollClient(server)
    await client.register("closer@example.com", PASSWORD)
    assert client.access_token is not None
    for trial in range(10):
        ws = await socket_for(server, client.access_token)
        for n in (1, 2):
            frame = {"type": "message", "content": "What is 2+2?", "client_id": f"t{trial}-{n}"}
            await ws.send(json.dumps(frame))
        await ws.close()

    async def settled() -> bool:
        runs = await all_runs(client)
        return len(runs) == 20 and all(r["state"] in TERMINAL for r in runs)

    await until(settled, within=30, what="every stored run ended")
    runs = await all_runs(client)
    assert {r["state"] for r in runs} == {"completed"}
    # A resend of a client_id answers with its (finished) run, never a second one.
    async with client.connect() as socket:
        ack = await socket.send_message("What is 2+2?", client_id="t9-2")
        assert ack["type"] == "ack"
        assert (await client.request("GET", f"/runs/{ack['run_id']}"))["state"] == "completed"
    assert len(await all_runs(client)) == 20
    await client.aclose()


async def test_a_run_whose_ack_was_lost_is_acknowledged_before_its_events(server: str) -> None:
    # R3: the ack is lost with the socket; the run streams on the next socket.
    client = AtollClient(server)
    await client.register("lost-ack@example.com", PASSWORD)
    assert client.access_token is not None
    second = await socket_for(server, client.access_token)
    first = await socket_for(server, client.access_token)
    frame = {"type": "message", "content": "What is 6*7?", "client_id": "lost"}
    await first.send(json.dumps(frame))
    await first.close()
    seen: list[dict[str, Any]] = []
    notices: list[dict[str, Any]] = []
    while not (seen and ends_run(seen[-1])):
        received = json.loads(await asyncio.wait_for(second.recv(), 10))
        # The thread and message notices of the user's other tabs are not run frames.
        (notices if received["type"] in NOTICES else seen).append(received)
    assert [n["type"] for n in notices] == ["message_created"]
    assert notices[0]["client_id"] == "lost"
    assert seen[0]["type"] == "ack"
    assert seen[0]["client_id"] == "lost"
    run_id = seen[0]["run_id"]
    assert [f["seq"] for f in seen[1:]] == list(range(1, len(seen)))
    assert all(f["run_id"] == run_id for f in seen)
    # The resend on this socket is acknowledged again and repeats nothing.
    await second.send(json.dumps(frame))
    again = json.loads(await asyncio.wait_for(second.recv(), 10))
    assert (again["type"], again["run_id"], again["client_id"]) == ("ack", run_id, "lost")
    await second.send(json.dumps({"type": "ping"}))
    assert json.loads(await asyncio.wait_for(second.recv(), 10)) == {"type": "pong"}
    await second.close()
    await client.aclose()


async def test_the_stalled_run_sweep_never_starts_a_run_twice(tmp_path: Path) -> None:
    # A run's state is written as it ends: one ending while the sweep reads the
    # database is still PENDING in what the sweep read; and a run whose turn has just
    # come (its user's previous run ended) may be put by the sweep before the run that
    # ended hands it over. Either way it must start once.
    settings = make_settings(
        tmp_path / "data", messages_per_minute=1000, max_concurrent_runs=1, max_waiting_runs=40
    )
    async with running_server(settings) as (url, server):
        services = server.config.app.state.services
        client = AtollClient(url)
        await client.register("sweep@example.com", PASSWORD)
        runs = [
            (await client.chat(f"What is {n}+1?", agent="assistant"))["run"]["id"]
            for n in range(40)
        ]

        async def last_ended() -> bool:
            return (await client.request("GET", f"/runs/{runs[-1]}"))["state"] in TERMINAL

        while not await last_ended():  # the runs go one by one (one slot): sweep all along
            await services.runs.start_stalled(older_than=0)
        for run in runs:
            events = await client.events(run)
            starts = [e for e in events if e["type"] == "agent_started" and not e["parent_agent"]]
            assert len(starts) == 1 and ends_run(events[-1]), run
        await client.aclose()
