"""`atoll serve` as a process: data survives a restart; a crash leaves runs DEAD, not running."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from atoll.client import AtollClient

from serving import PASSWORD, serve_process

pytestmark = [pytest.mark.e2e, pytest.mark.golden_path, pytest.mark.chaos]


async def test_threads_and_messages_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with serve_process(data) as server:
        async with AtollClient(server.url) as client:
            await client.register("restart@example.com", PASSWORD)
            async with client.connect() as socket:
                ack = await socket.send_message("What is 6*7?")
                events = [e async for e in socket.run_events(ack["run_id"])]
        assert events[-1]["type"] == "agent_completed"
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log_text()
        server.start()
        async with AtollClient(server.url) as client:
            await client.login("restart@example.com", PASSWORD)
            threads = await client.request("GET", "/threads")
            assert [t["id"] for t in threads["items"]] == [ack["thread_id"]]
            messages = await client.request("GET", f"/threads/{ack['thread_id']}/messages")
            assert [m["role"] for m in messages["items"]] == ["user", "assistant"]
            assert "42" in messages["items"][1]["content"]
            assert await client.events(ack["run_id"]) == events


async def test_a_run_interrupted_by_a_crash_is_dead_after_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with serve_process(data, ATOLL_OFFLINE_TOKEN_DELAY="2") as server:
        async with AtollClient(server.url) as client:
            await client.register("crash@example.com", PASSWORD)
            async with client.connect() as socket:
                ack = await socket.send_message("hello", agent="assistant")
                async for event in socket.run_events(ack["run_id"]):
                    if event["type"] == "agent_started":
                        break
        server.stop(signal.SIGKILL)
        server.start()
        async with AtollClient(server.url) as client:
            await client.login("crash@example.com", PASSWORD)
            run = await client.request("GET", f"/runs/{ack['run_id']}")
            assert run["state"] == "dead"
            assert run["error"]["code"] == "run_dead"
            events = await client.events(ack["run_id"])
            assert events[-1]["type"] == "agent_error"
            assert events[-1]["data"]["state"] == "dead"
            assert "server stopped" in events[-1]["data"]["message"]
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            # A new message on the same thread is not blocked by the dead run.
            accepted = await client.request(
                "POST", f"/threads/{ack['thread_id']}/runs", json={"message": "What is 1+1?"}
            )
            assert accepted["run"]["state"] in ("pending", "starting", "running", "completed")
            await asyncio.sleep(0)
