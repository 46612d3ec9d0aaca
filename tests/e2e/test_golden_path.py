"""The Golden Path of PRODUCT.md against a real server, for two users at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from atoll.client import AtollClient, ends_run
from atoll.server.serve import running_server

from inprocess import running_app
from serving import PASSWORD
from support import is_subsequence

pytestmark = [pytest.mark.e2e, pytest.mark.golden_path]

GOLDEN = ["agent_started", "agent_thinking", "tool_executing", "tool_completed",
          "message_delta", "agent_completed"]  # fmt: skip


def check_run_events(events: list[dict[str, Any]], run_id: str) -> None:
    assert all(e["run_id"] == run_id for e in events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e for e in events if ends_run(e)] == [events[-1]]


async def golden_path(client: AtollClient, *, header_auth: bool) -> dict[str, Any]:
    async with client.connect(header_auth=header_auth) as socket:
        assert socket.user_id == client.user["id"]  # type: ignore[index]
        ack = await socket.send_message("What is 17*23?", client_id="c-1")
        assert ack["type"] == "ack", ack
        assert ack["client_id"] == "c-1"
        # The message is stored before the ack: it is readable right away.
        stored = await client.request("GET", f"/threads/{ack['thread_id']}/messages")
        assert stored["items"][0]["id"] == ack["message_id"]
        events = [e async for e in socket.run_events(ack["run_id"])]
        return {"ack": ack, "events": events}


async def test_golden_path_for_two_users_at_once(new_client: Callable[..., Any]) -> None:
    ada, bob = await new_client(), await new_client()
    results = await asyncio.gather(
        golden_path(ada, header_auth=False), golden_path(bob, header_auth=True)
    )
    for client, result in zip((ada, bob), results, strict=True):
        ack, events = result["ack"], result["events"]
        check_run_events(events, ack["run_id"])
        assert is_subsequence(GOLDEN, [e["type"] for e in events])
        final = events[-1]
        assert final["type"] == "agent_completed"
        answer = final["data"]["message"]["content"]
        assert "391" in answer
        deltas = "".join(e["data"]["delta"] for e in events if e["type"] == "message_delta")
        assert deltas == answer
        # After a "reload": the thread shows both messages.
        messages = await client.request("GET", f"/threads/{ack['thread_id']}/messages")
        assert [(m["role"], m["content"]) for m in messages["items"]] == [
            ("user", "What is 17*23?"),
            ("assistant", answer),
        ]
        run = await client.request("GET", f"/runs/{ack['run_id']}")
        assert run["state"] == "completed"
        assert run["started_at"] is not None
        # The same events over /events and SSE.
        assert await client.events(ack["run_id"]) == events
        assert [e async for e in client.stream(ack["run_id"])] == events
        assert [e async for e in client.stream(ack["run_id"], after=3)] == events[3:]
    ada_runs = {e["run_id"] for e in results[0]["events"]}
    bob_runs = {e["run_id"] for e in results[1]["events"]}
    assert ada_runs.isdisjoint(bob_runs)


async def test_resume_after_a_dropped_connection_yields_exactly_the_missed_events(
    settings_factory: Callable[..., Any],
) -> None:
    settings = settings_factory(offline_token_delay=0.05)
    async with running_server(settings) as (url, _), AtollClient(url) as client:
        await client.register("resume@example.com", PASSWORD)
        seen: list[dict[str, Any]] = []
        async with client.connect() as socket:
            ack = await socket.send_message("How do plugins work?")
            async for event in socket.run_events(ack["run_id"]):
                seen.append(event)
                if event["type"] == "message_delta":
                    break  # the connection drops mid-answer
        async with client.connect() as socket:
            await socket.resume(ack["run_id"], seen[-1]["seq"])
            seen += [e async for e in socket.run_events(ack["run_id"])]
    check_run_events(seen, ack["run_id"])
    assert seen[-1]["type"] == "agent_completed"


@pytest.mark.inprocess
async def test_sse_follows_a_live_run(settings_factory: Callable[..., Any]) -> None:
    settings = settings_factory(offline_token_delay=0.02)
    async with running_app(settings) as app, app.client() as client:
        await client.register("sse@example.com", PASSWORD)
        accepted = await client.chat("hello", agent="assistant")
        events = [e async for e in client.stream(accepted["run"]["id"])]
    check_run_events(events, accepted["run"]["id"])
    assert events[-1]["type"] == "agent_completed"
    assert "offline model" in events[-1]["data"]["message"]["content"]
