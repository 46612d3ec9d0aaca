"""One-request streaming: ``POST /chat`` (or ``/threads/{id}/runs``) answering with the run's SSE.

The POST stores the message, then streams an ``ack`` (the 202 body) and every event
of the run to its terminal one; what it streams is exactly what the log holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from atoll.server.sse import accepts_event_stream

from inprocess import running_app
from serving import PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.inprocess]
STREAM = {"Accept": "text/event-stream"}


async def sse_messages(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The SSE messages of ``response`` as ``{"event", "id", "data"}`` (data parsed)."""
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            message: dict[str, Any] = {}
            for line in raw.split(b"\n"):
                name, _, value = line.partition(b": ")
                if name in (b"event", b"id"):
                    message[name.decode()] = value.decode()
                elif name == b"data":
                    message["data"] = orjson.loads(value)
            if "data" in message:
                yield message


async def streamed_post(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], token: str
) -> tuple[int, list[dict[str, Any]]]:
    headers = {**STREAM, "Authorization": f"Bearer {token}"}
    async with http.stream("POST", f"/api/v1{path}", json=body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, [response.json()]
        assert response.headers["content-type"].startswith("text/event-stream")
        return 200, [m async for m in sse_messages(response)]


async def test_one_post_streams_the_ack_and_every_event_of_the_run(
    settings_factory: Callable[..., Any],
) -> None:
    settings = settings_factory(offline_token_delay=0.01)
    async with running_app(settings) as app, app.client() as client:
        await client.register("onepost@example.com", PASSWORD)
        assert client.access_token is not None
        async with app.http(timeout=30) as http:
            status, messages = await streamed_post(
                http, "/chat", {"message": "What is 17*23?"}, client.access_token
            )
            assert status == 200
            ack, events = messages[0], messages[1:]
            assert ack["event"] == "ack" and "id" not in ack
            run_id, thread_id = ack["data"]["run"]["id"], ack["data"]["thread_id"]
            assert ack["data"]["message"]["content"] == "What is 17*23?"
            assert [int(m["id"]) for m in events] == list(range(1, len(events) + 1))
            assert [m["event"] for m in events] == [m["data"]["type"] for m in events]
            assert events[-1]["event"] == "agent_completed"
            assert "391" in events[-1]["data"]["data"]["message"]["content"]
            logged = (await client.request("GET", f"/runs/{run_id}/events"))["items"]
            assert [m["data"] for m in events] == logged

            # The same on a thread, and a stream that is dropped resumes exactly.
            headers = {**STREAM, "Authorization": f"Bearer {client.access_token}"}
            path = f"/api/v1/threads/{thread_id}/runs"
            kept: list[dict[str, Any]] = []
            async with http.stream(
                "POST", path, json={"message": "And 2+2?", "agent": "assistant"}, headers=headers
            ) as response:
                assert response.status_code == 200
                async for message in sse_messages(response):
                    kept.append(message)
                    if len(kept) == 3:  # the ack and two events, then the client goes away
                        break
            second = kept[0]["data"]["run"]["id"]
            assert kept[0]["data"]["run"]["thread_id"] == thread_id
            rest = [e async for e in client.stream(second, after=int(kept[-1]["id"]))]
            seqs = [int(m["id"]) for m in kept[1:]] + [e["seq"] for e in rest]
            assert seqs == list(range(1, len(seqs) + 1))
            assert rest[-1]["type"] == "agent_completed"


async def test_refusals_come_before_the_stream_and_store_nothing(
    settings_factory: Callable[..., Any],
) -> None:
    settings = settings_factory(offline_token_delay=0.05, max_sse_streams=1)
    async with running_app(settings) as app, app.client() as client:
        await client.register("refused@example.com", PASSWORD)
        token = client.access_token
        assert token is not None
        async with app.http(timeout=30) as http:
            status, [problem] = await streamed_post(http, "/chat", {"message": ""}, token)
            assert (status, problem["code"]) == (422, "validation_error")
            status, [problem] = await streamed_post(
                http, "/threads/thr_nope/runs", {"message": "hi"}, token
            )
            assert (status, problem["code"]) == (404, "not_found")
            headers = {**STREAM, "Authorization": f"Bearer {token}"}
            async with http.stream(
                "POST", "/api/v1/chat", json={"message": "a slow one"}, headers=headers
            ) as first:
                assert first.status_code == 200
                status, [problem] = await streamed_post(http, "/chat", {"message": "two"}, token)
                assert (status, problem["code"]) == (429, "too_many_streams")
                await first.aclose()
            threads = await client.request("GET", "/threads")
            assert [t["title"] for t in threads["items"]] == ["a slow one"]
            # Without an explicit Accept it is the usual 202 with JSON.
            plain = await http.post(
                "/api/v1/chat", json={"message": "plain"},
                headers={"Authorization": f"Bearer {token}", "Accept": "*/*"},
            )  # fmt: skip
            assert plain.status_code == 202
            assert plain.json()["run"]["state"] in ("pending", "starting", "running")


@pytest.mark.parametrize(
    ("accept", "streams"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", False),
        ("text/event-stream", True),
        ("TEXT/EVENT-STREAM", True),
        ("application/json, text/event-stream", True),
        ("application/json;q=1, text/event-stream;q=0.5", False),
        ("text/event-stream;q=0", False),
        ("text/event-stream;q=nonsense", False),
    ],
)
def test_which_accept_headers_ask_for_a_stream(accept: str | None, streams: bool) -> None:
    assert accepts_event_stream(accept) is streams
