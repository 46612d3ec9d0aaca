"""Runs over the API: multitask strategies, idempotent sends, cancel, limits, ops endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import websockets

from atoll.client import ApiError, AtollClient
from atoll.server.serve import running_server
from atoll.store.runs import Submission

from inprocess import InProcessApp, running_app
from serving import PASSWORD, make_settings
from support import until

pytestmark = [pytest.mark.e2e, pytest.mark.multi_user]


@pytest.fixture
async def slow_server(tmp_path: Path) -> AsyncIterator[str]:
    """A server whose offline model streams slowly, with small limits to reach."""
    settings = make_settings(
        tmp_path / "data", offline_token_delay=0.1, max_ws_connections=2, messages_per_minute=8
    )
    async with running_server(settings) as (url, _):
        yield url


async def user(url: str, email: str) -> AtollClient:
    client = AtollClient(url)
    await client.register(email, PASSWORD)
    return client


async def final_state(client: AtollClient, run_id: str) -> str:
    events = [e async for e in client.stream(run_id)]
    return str(events[-1]["type"])


async def test_multitask_reject_enqueue_interrupt(slow_server: str) -> None:
    client = await user(slow_server, "multi@example.com")
    first = await client.chat("hello", agent="assistant")
    thread = first["thread_id"]
    with pytest.raises(ApiError) as busy:
        await client.request("POST", f"/threads/{thread}/runs", json={"message": "again"})
    assert (busy.value.status, busy.value.code) == (409, "thread_busy")
    queued = await client.request(
        "POST", f"/threads/{thread}/runs", json={"message": "hi", "multitask": "enqueue"}
    )
    assert queued["run"]["state"] == "pending"
    assert await final_state(client, first["run"]["id"]) == "agent_completed"
    assert await final_state(client, queued["run"]["id"]) == "agent_completed"
    queued_events = await client.events(queued["run"]["id"])
    first_events = await client.events(first["run"]["id"])
    assert queued_events[0]["ts"] >= first_events[-1]["ts"]  # it ran after the first

    running = await client.request("POST", f"/threads/{thread}/runs", json={"message": "hey"})
    interrupting = await client.request(
        "POST", f"/threads/{thread}/runs", json={"message": "hey", "multitask": "interrupt"}
    )
    assert await final_state(client, running["run"]["id"]) == "agent_cancelled"
    assert await final_state(client, interrupting["run"]["id"]) == "agent_completed"
    assert (await client.request("GET", f"/runs/{running['run']['id']}"))["state"] == "cancelled"
    await client.aclose()


async def test_cancel_is_idempotent_over_rest_and_websocket(slow_server: str) -> None:
    client = await user(slow_server, "cancel@example.com")
    async with client.connect() as socket:
        ack = await socket.send_message("hello", agent="assistant")
        cancelled = await socket.cancel(ack["run_id"])
        assert cancelled["run_id"] == ack["run_id"]
        events = [e async for e in socket.run_events(ack["run_id"])]
    assert events[-1]["type"] == "agent_cancelled"
    assert events[-1]["data"] == {"reason": "user"}
    again = await client.request("POST", f"/runs/{ack['run_id']}/cancel")
    assert again["state"] == "cancelled"
    await client.aclose()


async def test_resending_a_client_id_does_not_start_a_second_run(slow_server: str) -> None:
    client = await user(slow_server, "idem@example.com")
    async with client.connect() as socket:
        first = await socket.send_message("hello", agent="assistant", client_id="same-1")
        second = await socket.send_message("hello", agent="assistant", client_id="same-1")
        assert (second["run_id"], second["message_id"]) == (first["run_id"], first["message_id"])
        events = [e async for e in socket.run_events(first["run_id"])]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    messages = await client.request("GET", f"/threads/{first['thread_id']}/messages")
    assert [m["role"] for m in messages["items"]] == ["user", "assistant"]
    await client.aclose()


async def test_connection_limit_and_several_connections_per_user(slow_server: str) -> None:
    client = await user(slow_server, "conns@example.com")
    async with client.connect() as one, client.connect() as two:
        ws_url = slow_server.replace("http", "ws", 1) + "/api/v1/ws"
        headers = {"Authorization": f"Bearer {client.access_token}"}
        async with websockets.connect(ws_url, additional_headers=headers) as third:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(third.recv(), 5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1008
        ack = await one.send_message("What is 3*3?")
        on_one = [e async for e in one.run_events(ack["run_id"])]
        on_two = [e async for e in two.run_events(ack["run_id"])]
    assert on_one == on_two
    assert on_one[-1]["type"] == "agent_completed"
    await client.aclose()


async def test_message_rate_limit(slow_server: str) -> None:
    client = await user(slow_server, "rate@example.com")
    codes = []
    async with client.connect() as socket:
        for index in range(9):
            answer = await socket.send_message(f"What is {index}+1?")
            codes.append(answer.get("code", answer["type"]))
    assert codes == ["ack"] * 8 + ["rate_limited"]
    with pytest.raises(ApiError) as limited:
        await client.chat("one more")
    assert (limited.value.status, limited.value.code) == (429, "rate_limited")
    await client.aclose()


async def test_lists_agents_tools_threads_and_ops(
    app_client: Callable[..., Any], app: InProcessApp
) -> None:
    client: AtollClient = await app_client()
    agents = {a["name"] for a in await client.request("GET", "/agents")}
    assert {"assistant", "supervisor"} <= agents
    tools = {t["name"]: t for t in await client.request("GET", "/tools")}
    assert tools["calculator"]["parameters"]["required"] == ["expression"]
    for index in range(3):
        await client.request("POST", "/threads", json={"title": f"t{index}"})
    page = await client.request("GET", "/threads", params={"limit": 2})
    assert [t["title"] for t in page["items"]] == ["t2", "t1"]
    rest = await client.request("GET", "/threads", params={"cursor": page["next_cursor"]})
    assert [t["title"] for t in rest["items"]] == ["t0"]
    assert rest["next_cursor"] is None
    renamed = await client.request("PATCH", f"/threads/{rest['items'][0]['id']}",
                                   json={"title": "renamed"})  # fmt: skip
    assert renamed["title"] == "renamed"
    me = await client.request("GET", "/me")
    assert me["plan"] == "free"
    async with app.http() as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = (await http.get("/readyz")).json()
        assert ready["database"] == "ok"
        await client.chat("What is 5*5?")
        metrics = (await http.get("/metrics")).text
        assert "atoll_runs" in metrics
        assert "atoll_websocket_connections" in metrics
        assert "atoll_event_delivery_seconds" in metrics
        openapi = (await http.get("/openapi.json")).json()
        assert "/api/v1/chat" in openapi["paths"]


async def test_deleting_a_thread_cancels_its_run(slow_server: str) -> None:
    client = await user(slow_server, "delete@example.com")
    accepted = await client.chat("hello", agent="assistant")
    await client.request("DELETE", f"/threads/{accepted['thread_id']}")
    with pytest.raises(ApiError) as gone:
        await client.request("GET", f"/runs/{accepted['run']['id']}")
    assert gone.value.status == 404
    assert (await client.request("GET", "/threads"))["items"] == []
    await client.aclose()


@pytest.mark.inprocess
async def test_a_run_over_the_limit_in_reject_mode_ends_with_run_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", offline_token_delay=0.1,
                             max_concurrent_runs=1, run_overflow="reject")  # fmt: skip
    async with running_app(settings) as app, app.client() as client:
        await client.register("reject@example.com", PASSWORD)
        first = await client.chat("Tell me about the runtime", agent="assistant")

        async def running() -> bool:  # then it holds the user's only slot
            run = await client.request("GET", f"/runs/{first['run']['id']}")
            return bool(run["state"] == "running")

        await until(running, within=30, what="the first run running")
        second = await client.chat("What is 1+1?", agent="assistant")
        events = [e async for e in client.stream(second["run"]["id"])]
        assert [(e["seq"], e["type"]) for e in events] == [(1, "agent_error")]
        assert (events[0]["data"]["code"], events[0]["data"]["state"]) == ("run_limit", "failed")
        run = await client.request("GET", f"/runs/{second['run']['id']}")
        assert (run["state"], run["error"]["code"]) == ("failed", "run_limit")
        assert await final_state(client, first["run"]["id"]) == "agent_completed"


async def test_a_cancel_right_after_the_send_always_ends_the_run(slow_server: str) -> None:
    """The cancel reaches the run while its claim is still being written: the run must
    end (cancelled) all the same, never stay ``starting`` with no terminal event."""
    client = await user(slow_server, "quickcancel@example.com")
    run_ids = []
    for n in range(6):
        accepted = await client.chat(f"cancel me {n}", agent="assistant")
        run_ids.append(accepted["run"]["id"])
        await client.request("POST", f"/runs/{accepted['run']['id']}/cancel")
    for run_id in run_ids:
        assert await final_state(client, run_id) == "agent_cancelled"
        assert (await client.request("GET", f"/runs/{run_id}"))["state"] == "cancelled"
        events = await client.events(run_id)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert [e["type"] for e in events if e["parent_agent"] is None][-1] == "agent_cancelled"
    await client.aclose()


async def test_a_cancel_that_reaches_a_run_during_its_claim_or_before_ends_it(
    tmp_path: Path,
) -> None:
    """In one process a run is handed to the consumer as it is stored. A cancel in the
    same moment finds it claiming (the claim is being written) or not even started; either
    way the run must end cancelled with its terminal event, not stay ``starting``."""
    settings = make_settings(tmp_path / "data", offline_token_delay=0.05)
    async with running_server(settings) as (url, server), AtollClient(url) as client:
        services = server.config.app.state.services
        await client.register("claiming@example.com", PASSWORD)
        principal = await services.auth.authenticate(client.access_token)
        during = await services.runs.submit(principal, Submission(content="one", agent="assistant"))
        await services.runs._runs.cancel(during.run.id, principal.user_id, "user")
        store, consumer = services.runs._store, services.runs._runs.consumer
        before, _ = await store.submit(
            principal.user_id, Submission(content="two"), agent="assistant"
        )
        consumer.put(before.run.id, principal.user_id)
        assert consumer.cancel(before.run.id, "user")
        for run_id in (during.run.id, before.run.id):
            events = [e async for e in client.stream(run_id)]
            assert [e["type"] for e in events] == ["agent_cancelled"]
            assert (await client.request("GET", f"/runs/{run_id}"))["state"] == "cancelled"
        await until(lambda: not consumer.runs, 5, "the consumer let go of both runs")
