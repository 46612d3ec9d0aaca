"""Every way a session ends ends everything open with it, on every door (issue 24, item 4).

A user has a run streaming on each door at once — the WebSocket, ``GET /runs/{id}/stream``,
a streamed ``POST /chat``, the OpenAI door (streamed, and a whole answer being waited
for) and AG-UI — each run held mid-answer by the
model (the fake's "gate"), so nothing ends by itself. Then the session (or API key)
ends: a logout, a refresh token reused, the key revoked, the member removed, SSO
required. Every socket closes with 4401 and every stream ends with its door's error
while the runs are still waiting: nothing goes on delivering to a session that ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
import websockets
from sqlalchemy import select, update

from atoll.client import AtollClient
from atoll.server.serve import running_server
from atoll.server.services import Services
from atoll.store.models import AuthSession, OrgMember, Run, utcnow
from integration.fake_openai import API_KEY, FakeOpenAI, serve_fake_openai

from serving import PASSWORD, make_settings
from support import until

pytestmark = [pytest.mark.e2e, pytest.mark.security]
GATED = "gate: wait here"
"""A question the fake model answers with one word, then waits for its gate."""
DEADLINE = 10.0
"""How long a test waits for what must happen (it happens within a second)."""


@dataclass
class Served:
    url: str
    services: Services
    fake: FakeOpenAI
    http: httpx.AsyncClient


@asynccontextmanager
async def served(tmp_path: Path, **settings: Any) -> AsyncIterator[Served]:
    """A server whose model is the fake (its gate holds runs), with room for five runs."""
    async with serve_fake_openai() as fake:
        model = {"llm_provider": "openai", "llm_base_url": fake.base_url,
                 "llm_api_key": API_KEY, "llm_model": "fake-model"}  # fmt: skip
        config = make_settings(tmp_path / "data", max_concurrent_runs=10, **model, **settings)
        async with (
            running_server(config) as (url, server),
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            try:
                yield Served(url, server.config.app.state.services, fake, http)
            finally:
                fake.gate.set()


@dataclass
class Stream:
    """One door's stream, read in the background: its SSE messages as they come."""

    door: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    live: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def read(self, http: httpx.AsyncClient, request: httpx.Request) -> None:
        response = await http.send(request, stream=True)
        try:
            assert response.status_code == 200, (self.door, await response.aread())
            buffer = b""
            async for chunk in response.aiter_bytes():
                buffer += chunk
                while b"\n\n" in buffer:
                    raw, buffer = buffer.split(b"\n\n", 1)
                    self._add(raw)
        finally:
            await response.aclose()

    def _add(self, raw: bytes) -> None:
        message: dict[str, Any] = {}
        for line in raw.split(b"\n"):
            name, _, value = line.partition(b": ")
            if name == b"event":
                message["event"] = value.decode()
            elif name == b"data":
                message["data"] = value.decode() if value == b"[DONE]" else orjson.loads(value)
        if "data" in message:
            self.messages.append(message)
            self.live.set()

    async def ended(self) -> list[dict[str, Any]]:
        """Every message, once the server ended the stream (fails after ``DEADLINE``)."""
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), DEADLINE)
        return self.messages


def start(served: Served, door: str, request: httpx.Request) -> Stream:
    stream = Stream(door)
    stream.task = asyncio.create_task(stream.read(served.http, request))
    return stream


def streams_of(served: Served, token: str) -> list[Stream]:
    """A gated run streaming on each of the four HTTP doors, opened with ``token``."""
    auth = {"Authorization": f"Bearer {token}"}
    sse = {**auth, "Accept": "text/event-stream"}
    http = served.http
    body = {"message": GATED, "agent": "assistant"}
    agui = {
        "threadId": str(uuid.uuid4()), "runId": str(uuid.uuid4()), "tools": [], "context": [],
        "state": {}, "forwardedProps": {},
        "messages": [{"id": str(uuid.uuid4()), "role": "user", "content": GATED}],
    }  # fmt: skip
    completion = {"model": "assistant", "stream": True,
                  "messages": [{"role": "user", "content": GATED}]}  # fmt: skip
    return [
        start(served, "streamed POST", http.build_request(
            "POST", "/api/v1/chat", json=body, headers=sse)),
        start(served, "openai", http.build_request(
            "POST", "/v1/chat/completions", json=completion, headers=auth)),
        start(served, "agui", http.build_request(
            "POST", "/api/v1/agui", json=agui, params={"agent": "assistant"}, headers=sse)),
    ]  # fmt: skip


async def followed_run(served: Served, token: str) -> Stream:
    """A gated run started over REST and followed with ``GET /runs/{id}/stream``."""
    auth = {"Authorization": f"Bearer {token}"}
    accepted = await served.http.post(
        "/api/v1/chat", json={"message": GATED, "agent": "assistant"}, headers=auth
    )
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["run"]["id"]
    request = served.http.build_request(
        "GET", f"/api/v1/runs/{run_id}/stream", headers={**auth, "Accept": "text/event-stream"}
    )
    return start(served, "GET stream", request)


@asynccontextmanager
async def everything_open(served: Served, token: str) -> AsyncIterator[tuple[Any, list[Stream]]]:
    """A socket with a gated run and the four HTTP doors streaming gated runs, all live."""
    client = AtollClient(served.url)
    client.access_token = token
    streams = [*streams_of(served, token), await followed_run(served, token)]
    try:
        async with client.connect() as socket:
            ack = await socket.send_message(GATED, agent="assistant")
            assert ack["type"] == "ack"
            for stream in streams:
                await asyncio.wait_for(stream.live.wait(), DEADLINE)
            yield socket, streams
    finally:
        for stream in streams:
            assert stream.task is not None
            stream.task.cancel()
            with contextlib.suppress(BaseException):
                await stream.task
        await client.aclose()


async def socket_closed(socket: Any) -> tuple[int, str]:
    """The close code and reason of a socket the server closes (fails after ``DEADLINE``)."""

    async def until_closed() -> None:
        while True:
            await socket.receive()

    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(until_closed(), DEADLINE)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


def session_error(door: str, messages: list[dict[str, Any]]) -> Any:
    """The error a stream ended with, in its door's words."""
    last = messages[-1]
    if door == "openai":
        assert last["data"] == "[DONE]"
        return messages[-2]["data"]["error"]["code"]
    if door == "agui":
        assert last["data"]["type"] == "RUN_ERROR"
        return last["data"]["code"]
    assert last["event"] == "error"
    assert last["data"]["type"] == "error"
    return last["data"]["code"]


async def ends_everything(
    served: Served, token: str, end: Callable[[], Awaitable[None]], reason: str
) -> None:
    """Open every door with ``token``; after ``end()`` each closes with the session's end,
    while every run still waits at the model's gate."""
    async with everything_open(served, token) as (socket, streams):
        asked = len(served.fake.requests)
        completion = {"model": "assistant", "messages": [{"role": "user", "content": GATED}]}
        whole = asyncio.create_task(
            served.http.post(
                "/v1/chat/completions",
                json=completion,
                headers={"Authorization": f"Bearer {token}"},
            )
        )  # a completion not streamed: its answer is waited for
        await until(lambda: len(served.fake.requests) > asked, DEADLINE, "the run at the model")
        await end()
        assert await socket_closed(socket) == (4401, reason)
        for stream in streams:
            messages = await stream.ended()
            assert session_error(stream.door, messages) == "session_revoked", stream.door
        answer = await asyncio.wait_for(whole, DEADLINE)
        assert (answer.status_code, answer.json()["error"]["code"]) == (401, "session_revoked")
        assert not served.fake.gate.is_set()  # no run ended by itself: the session did
    refused = await served.http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert (refused.status_code, refused.json()["code"]) == (401, "session_revoked")


async def signed_up(served: Served, email: str) -> AtollClient:
    client = AtollClient(served.url)
    await client.register(email, PASSWORD)
    return client


async def test_a_logout_ends_every_socket_and_stream_of_the_session(tmp_path: Path) -> None:
    async with served(tmp_path) as server:
        ada = await signed_up(server, "ada@example.com")
        assert ada.access_token is not None
        await ends_everything(server, ada.access_token, ada.logout, "session_revoked")
        await ada.aclose()


async def test_a_reused_refresh_token_ends_every_socket_and_stream(tmp_path: Path) -> None:
    async with served(tmp_path, refresh_reuse_seconds=0) as server:
        ada = await signed_up(server, "ada@example.com")
        spent = ada.refresh_token
        await ada.refresh()
        assert ada.access_token is not None

        async def reuse() -> None:
            answer = await server.http.post("/api/v1/auth/refresh", json={"refresh_token": spent})
            assert (answer.status_code, answer.json()["code"]) == (401, "refresh_reused")

        await ends_everything(server, ada.access_token, reuse, "session_revoked")
        await ada.aclose()


async def test_a_revoked_key_ends_every_socket_and_stream_opened_with_it(tmp_path: Path) -> None:
    async with served(tmp_path) as server:
        ada = await signed_up(server, "ada@example.com")
        made = await ada.request("POST", "/keys", json={"name": "program"})

        async def revoke() -> None:
            await ada.request("DELETE", f"/keys/{made['id']}")

        await ends_everything(server, made["key"], revoke, "session_revoked")
        await ada.aclose()


async def acme(server: Served) -> tuple[str, AtollClient, AtollClient]:
    """Acme (domain acme.test): its admin Gil and its member Ada, both with passwords."""
    services = server.services
    org = await services.org_admin.create("Acme", "pro")
    await services.orgs.add_domain(org.id, "acme.test")
    people = []
    for email, role in (("gil@acme.test", "admin"), ("ada@acme.test", "member")):
        client = await signed_up(server, email)
        user_id = (await client.request("GET", "/me"))["id"]
        member = OrgMember(user_id=user_id, org_id=org.id, role=role, joined_at=utcnow())
        await services.db.write(lambda session, member=member: session.add(member))
        people.append(client)
    services.auth.sessions.clear()  # the memberships were written behind the server's back
    return org.id, people[0], people[1]


@pytest.mark.parametrize("credential", ["session", "key"])
async def test_removal_from_the_organisation_ends_every_socket_and_stream(
    tmp_path: Path, credential: str
) -> None:
    """The member's sessions and API keys all end: a key is refused too, not only passwords."""
    async with served(tmp_path) as server:
        org_id, gil, ada = await acme(server)
        me = await ada.request("GET", "/me")
        assert me["org"]["id"] == org_id
        if credential == "key":
            token = (await ada.request("POST", "/keys", json={"name": "program"}))["key"]
        else:
            assert ada.access_token is not None
            token = ada.access_token

        async def remove() -> None:
            await gil.request("DELETE", f"/orgs/{org_id}/members/{me['id']}")

        await ends_everything(server, token, remove, "removed_from_org")
        await gil.aclose()
        await ada.aclose()


async def test_requiring_sso_ends_every_socket_and_stream_of_password_sessions(
    tmp_path: Path,
) -> None:
    async with served(tmp_path) as server:
        org_id, gil, ada = await acme(server)
        assert ada.access_token is not None

        async def require_sso() -> None:
            ended = await server.services.org_admin.require_sso(org_id, True, by=None)
            assert len(ended) == 2  # Gil's password session and Ada's

        await ends_everything(server, ada.access_token, require_sso, "session_revoked")
        await gil.aclose()
        await ada.aclose()


async def revoked_behind_the_servers_back(services: Services, token: str) -> None:
    """End the token's session in the database, as another process (the CLI) would: no
    announcement reaches the server."""
    session_id = jwt.decode(token, options={"verify_signature": False})["sid"]
    statement = (
        update(AuthSession)
        .where(AuthSession.id == session_id)
        .values(revoked_at=utcnow(), revoked_reason="logout")
    )
    await services.db.write(lambda session: session.execute(statement))


@pytest.mark.parametrize("frame", ["message", "cancel", "resume"])
async def test_every_frame_that_starts_work_checks_the_session_again(
    tmp_path: Path, frame: str
) -> None:
    """A socket opened with a session that has since ended starts nothing: the message, the
    cancel or the resume closes it with 4401 instead. (No session cache, and the periodic
    check of open sessions far away: only the frame's own check can see the ending.)"""
    settings = {"session_cache_seconds": 0, "session_check_seconds": 60}
    async with served(tmp_path, **settings) as server:
        ada = await signed_up(server, "ada@example.com")
        assert ada.access_token is not None
        user_id = (await ada.request("GET", "/me"))["id"]
        async with ada.connect() as socket:
            run_id = (await socket.send_message(GATED, agent="assistant"))["run_id"]
            frame = await socket.receive()
            while (frame.get("type"), frame.get("run_id")) != ("message_delta", run_id):
                frame = await socket.receive()  # then nothing more: the run waits at the gate
            await revoked_behind_the_servers_back(server.services, ada.access_token)
            if frame == "message":
                await socket.send({"type": "message", "content": "hello", "agent": "assistant"})
            elif frame == "cancel":
                await socket.send({"type": "cancel", "run_id": run_id})
            else:
                await socket.send({"type": "resume", "run_id": run_id, "after": 0})
            received: list[dict[str, Any]] = []

            async def until_closed() -> None:
                while True:
                    received.append(await socket.receive())

            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(until_closed(), DEADLINE)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "session_revoked")
        assert received == []
        async with server.services.db.session() as session:
            runs = (await session.execute(select(Run).where(Run.user_id == user_id))).scalars()
            stored = [(run.id, run.state) for run in runs]
        assert [run for run, _ in stored] == [run_id]  # no new run
        assert stored[0][1] in ("starting", "running")  # not cancelled
        await ada.aclose()
