"""Bad input gets a clear 4xx problem naming the field (REST) or an error frame (WebSocket)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets

from atoll.client import AtollClient

from inprocess import InProcessApp

pytestmark = pytest.mark.e2e

LONG = "x" * 32_001


async def call(
    app: InProcessApp, token: str | None, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kwargs.pop("headers", {}))
    async with app.http() as http:
        return await http.request(method, f"/api/v1{path}", headers=headers, **kwargs)


def fields(answer: httpx.Response) -> set[str]:
    body = answer.json()
    assert answer.headers["content-type"] == "application/problem+json"
    assert set(body) == {"type", "title", "status", "detail", "code", "errors"}
    assert body["status"] == answer.status_code
    return {str(error["loc"][-1]) for error in body["errors"]}


PUBLIC_CASES = [
    ("/auth/register", {}, {"email", "password"}),
    ("/auth/register", {"email": 5, "password": ["x"]}, {"email", "password"}),
    ("/auth/register", {"email": "a" * 400 + "@x.io", "password": "long enough"}, {"email"}),
    ("/auth/register", {"email": "not-an-email", "password": "long enough"}, {"email"}),
    ("/auth/register", {"email": "short@example.com", "password": "short"}, {"password"}),
    ("/auth/login", {}, {"email", "password"}),
    ("/auth/login", {"email": None, "password": 3}, {"email", "password"}),
    ("/auth/refresh", {}, {"refresh_token"}),
    ("/auth/refresh", {"refresh_token": 12}, {"refresh_token"}),
]


@pytest.mark.parametrize(("path", "body", "named"), PUBLIC_CASES)
async def test_public_endpoints(app: InProcessApp, path: str, body: Any, named: set[str]) -> None:
    answer = await call(app, None, "POST", path, json=body)
    assert answer.status_code == 422
    assert answer.json()["code"] == "validation_error"
    assert named <= fields(answer)


async def test_non_json_and_non_object_bodies(app: InProcessApp) -> None:
    for content in (b"{not json", b"[1, 2]", b'"text"'):
        answer = await call(
            app, None, "POST", "/auth/login", content=content,
            headers={"content-type": "application/json"},
        )  # fmt: skip
        assert answer.status_code == 422, content
        fields(answer)


async def test_authenticated_endpoints(app_client: Callable[..., Any], app: InProcessApp) -> None:
    client: AtollClient = await app_client()
    token = client.access_token
    thread = (await client.request("POST", "/threads", json={"title": "t"}))["id"]
    cases: list[tuple[str, str, dict[str, Any], set[str], str]] = [
        ("POST", "/threads", {"json": {"title": 5}}, {"title"}, "validation_error"),
        ("POST", "/threads", {"json": {"title": "x" * 501}}, {"title"}, "validation_error"),
        ("POST", "/threads", {"json": {"metadata": [1]}}, {"metadata"}, "validation_error"),
        ("PATCH", f"/threads/{thread}", {"json": {"title": []}}, {"title"}, "validation_error"),
        ("GET", "/threads", {"params": {"limit": 0}}, {"limit"}, "validation_error"),
        ("GET", "/threads", {"params": {"limit": "many"}}, {"limit"}, "validation_error"),
        ("GET", "/threads", {"params": {"cursor": "%%%"}}, {"cursor"}, "validation_error"),
        ("POST", f"/threads/{thread}/runs", {"json": {}}, {"message"}, "validation_error"),
        ("POST", f"/threads/{thread}/runs", {"json": {"message": ""}}, {"message"},
         "validation_error"),
        ("POST", f"/threads/{thread}/runs", {"json": {"message": LONG}}, {"message"},
         "validation_error"),
        ("POST", f"/threads/{thread}/runs", {"json": {"message": 7}}, {"message"},
         "validation_error"),
        ("POST", f"/threads/{thread}/runs", {"json": {"message": "hi", "multitask": "often"}},
         {"multitask"}, "validation_error"),
        ("POST", "/chat", {"json": {"message": "hi", "thread_id": 5}}, {"thread_id"},
         "validation_error"),
        ("POST", "/chat", {"json": {"message": ["hi"]}}, {"message"}, "validation_error"),
        ("GET", "/runs/run_x/events", {"params": {"after": -1}}, {"after"}, "validation_error"),
    ]  # fmt: skip
    for method, path, kwargs, named, code in cases:
        answer = await call(app, token, method, path, **kwargs)
        assert 400 <= answer.status_code < 500, (method, path, kwargs, answer.text)
        assert answer.json()["code"] == code, (method, path, answer.text)
        assert named <= fields(answer), (method, path, answer.text)
    unknown_agent = await call(app, token, "POST", "/chat", json={"message": "hi", "agent": "nope"})
    assert unknown_agent.status_code == 422
    assert unknown_agent.json()["code"] == "unknown_agent"
    run = (await client.chat("What is 1+1?"))["run"]["id"]
    headers = {"Last-Event-ID": "abc"}
    stream = await call(app, token, "GET", f"/runs/{run}/stream", headers=headers)
    assert stream.status_code == 422
    assert "last-event-id" in fields(stream)
    extra = await call(app, token, "POST", "/threads", json={"title": "ok", "surprise": 1})
    assert extra.status_code == 201
    missing_auth = await call(app, None, "GET", "/threads")
    assert missing_auth.status_code == 401
    assert missing_auth.json()["code"] == "invalid_token"
    nowhere = await call(app, token, "GET", "/nowhere")
    assert nowhere.status_code == 404
    assert nowhere.json()["code"] == "not_found"


async def test_bad_websocket_frames_get_error_frames(new_client: Callable[..., Any]) -> None:
    client: AtollClient = await new_client()
    async with client.connect() as socket:
        cases = [
            ("{nope", "bad_frame"),
            ("[1, 2]", "bad_frame"),
            ('{"type": "dance"}', "unknown_type"),
            ('{"no": "type"}', "unknown_type"),
            ('{"type": "message"}', "validation_error"),
            ('{"type": "message", "content": 5}', "validation_error"),
            ('{"type": "message", "content": "   "}', "validation_error"),
            ('{"type": "message", "content": "hi", "multitask": "x"}', "validation_error"),
            ('{"type": "message", "content": "hi", "agent": "nope"}', "unknown_agent"),
            (json.dumps({"type": "message", "content": LONG}), "validation_error"),
            ('{"type": "cancel"}', "validation_error"),
            ('{"type": "resume", "run_id": "run_x", "after": "soon"}', "validation_error"),
            ('{"type": "resume", "run_id": "run_x", "after": -1}', "validation_error"),
            ('{"type": "auth", "token": "again"}', "already_authenticated"),
        ]
        for text, code in cases:
            await socket.connection.send(text)
            frame = await asyncio.wait_for(socket.receive(), 5)
            assert (frame["type"], frame["code"]) == ("error", code), text
            assert frame["detail"]
        await socket.connection.send(b"\x00binary")
        assert (await socket.receive())["code"] == "bad_frame"
        assert (await socket.ping())["type"] == "pong"  # still connected
        await socket.connection.send("x" * (64 * 1024 + 1))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.receive(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008


async def test_auth_frame_timeout_closes_4408(settings_factory: Callable[..., Any]) -> None:
    from atoll.server.serve import running_server

    async with running_server(settings_factory(ws_auth_timeout=0.3)) as (url, _):
        ws_url = url.replace("http", "ws", 1) + "/api/v1/ws"
        async with websockets.connect(ws_url) as socket:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(socket.recv(), 5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4408


async def test_an_identity_id_outside_the_storage_range_is_a_422_not_a_500(
    app_client: Any,
) -> None:
    """Found by schemathesis: a 24-digit id overflowed SQLite's 64-bit INTEGER."""
    client = await app_client()
    for bad in ("-198608164759584555139072", str(2**63), "0", "1.5"):
        answer = await client.http.delete(f"/api/v1/me/identities/{bad}", headers=client._headers())
        assert answer.status_code == 422, (bad, answer.text)
    missing = await client.http.delete(
        f"/api/v1/me/identities/{2**63 - 1}", headers=client._headers()
    )
    assert missing.status_code == 404


REFUSED_TEXT = ["\ud800x", "x\udc00", "a\x00b"]
"""Text no door stores: lone surrogates (not Unicode) and U+0000 (PostgreSQL cannot hold it)."""


def refused_bodies(bad: str, thread: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(door, path, body) with ``bad`` in one place each: what is stored, and what is not."""
    message = {"role": "user", "content": "hi"}
    agui = {"threadId": "t1", "runId": "r1", "messages": [{"id": "m1", **message}],
            "tools": [], "context": [], "state": {}, "forwardedProps": {}}  # fmt: skip
    return [
        ("rest", "/api/v1/chat", {"message": bad}),
        ("rest", "/api/v1/chat", {"message": "hi", "thread_id": bad}),
        ("rest", "/api/v1/chat", {"message": "hi", "metadata": {bad: 1}}),
        ("rest", f"/api/v1/threads/{thread}/runs", {"message": bad}),
        ("rest", "/api/v1/threads", {"title": bad}),
        ("openai", "/v1/chat/completions", {"model": "assistant", "messages": [
            {"role": "user", "content": bad}]}),
        ("openai", "/v1/chat/completions", {"model": "assistant", "messages": [
            {"role": "user", "content": [{"type": "text", "text": bad}]}]}),
        ("openai", "/v1/chat/completions", {"model": bad, "messages": [message]}),
        ("openai", "/v1/chat/completions", {"model": "assistant", "messages": [message],
                                            "tools": [{"name": bad}]}),
        ("agui", "/api/v1/agui", {**agui, "threadId": bad}),
        ("agui", "/api/v1/agui", {**agui, "runId": bad}),
        ("agui", "/api/v1/agui", {**agui, "messages": [{"id": bad, **message}]}),
        ("agui", "/api/v1/agui", {**agui, "messages": [{"id": "m1", "role": "user",
                                                         "content": bad}]}),
        ("agui", "/api/v1/agui", {**agui, "state": {"note": [bad]}}),
    ]  # fmt: skip


async def test_refused_text_is_a_422_on_every_door_and_nothing_is_stored(
    new_client: Callable[..., Any], server: str
) -> None:
    """Issue 23 F2: a lone surrogate in an AG-UI body was a 500 (it reached the database),
    and U+0000 was stored on SQLite but a 500 on PostgreSQL, on every door."""
    client: AtollClient = await new_client()
    thread = (await client.request("POST", "/threads", json={}))["id"]
    headers = {"Authorization": f"Bearer {client.access_token}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=server, headers=headers) as http:
        for bad in REFUSED_TEXT:
            for door, path, body in refused_bodies(bad, thread):
                answer = await http.post(path, content=json.dumps(body))
                assert answer.status_code == 422, (door, body, answer.text)
                if door == "openai":
                    error = answer.json()["error"]
                    assert error["code"] == "validation_error" and error["param"], answer.text
                else:
                    assert fields(answer), answer.text
                    assert answer.json()["code"] == "validation_error"
        # In a URL (which cannot carry a lone surrogate: it is not UTF-8), U+0000 as %00.
        for path in ("/api/v1/runs/a%00/stream", "/api/v1/threads/a%00b/messages",
                     "/api/v1/threads?q=a%00b", f"/api/v1/runs/{thread}/events?x=%00"):  # fmt: skip
            answer = await http.get(path)
            assert (answer.status_code, answer.json()["code"]) == (422, "validation_error"), path
            assert fields(answer), answer.text
    async with client.connect() as socket:
        for bad in REFUSED_TEXT:
            for frame in ({"content": bad}, {"content": "hi", "thread_id": bad},
                          {"content": "hi", "client_id": bad}):  # fmt: skip
                await socket.connection.send(json.dumps({"type": "message", **frame}))
                error = await asyncio.wait_for(socket.receive(), 5)
                assert (error["type"], error["code"]) == ("error", "validation_error"), frame
        assert (await socket.ping())["type"] == "pong"
    assert [t["id"] for t in (await client.request("GET", "/threads"))["items"]] == [thread]
    messages = await client.request("GET", f"/threads/{thread}/messages")
    assert messages["items"] == []
