"""API nodes on a shared PostgreSQL + Redis: limits hold cluster-wide; queued runs are bounded.

The nodes run in this process (two apps, each with its own Redis and database
connections), which is enough for what does not need a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from atoll.client import ApiError, AtollClient
from atoll.config import Settings
from atoll.server.serve import running_server

from postgres import create_database, postgres_server
from redis_server import redis_server
from serving import PASSWORD, make_settings

pytestmark = [pytest.mark.scale_out, pytest.mark.e2e]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str]]:
    with postgres_server() as postgres, redis_server() as redis:
        yield postgres, redis.url


@contextlib.asynccontextmanager
async def two_nodes(
    servers: tuple[str, str], tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[AtollClient, AtollClient]]:
    """Two API nodes on one database and Redis, and a client of each."""
    postgres, redis_url = servers
    database_url = await asyncio.to_thread(create_database, postgres)
    shared = {"database_url": database_url, "redis_url": redis_url,
              "secret_key": secrets.token_urlsafe(48), **overrides}  # fmt: skip

    def settings(name: str) -> Settings:
        return make_settings(tmp_path / name, **shared)

    async with (
        running_server(settings("a")) as (node_a, _),
        running_server(settings("b")) as (node_b, _),
        AtollClient(node_a) as on_a,
        AtollClient(node_b) as on_b,
    ):
        yield on_a, on_b


async def test_the_message_rate_limit_is_shared_by_the_nodes(
    servers: tuple[str, str], tmp_path: Path
) -> None:
    async with two_nodes(servers, tmp_path, messages_per_minute=2) as (on_a, on_b):
        await on_a.register("rate@example.com", PASSWORD)
        await on_b.login("rate@example.com", PASSWORD)
        await on_a.chat("one")
        await on_b.chat("two")
        with pytest.raises(ApiError) as refused:
            await on_a.chat("three")
        assert (refused.value.status, refused.value.code) == (429, "rate_limited")


async def test_failed_logins_are_counted_across_the_nodes(
    servers: tuple[str, str], tmp_path: Path
) -> None:
    async with two_nodes(servers, tmp_path, login_failures_limit=2) as (on_a, on_b):
        await on_a.register("guess@example.com", PASSWORD)
        on_a.http.cookies.clear()  # no device cookie: limited like any client (docs/auth.md)
        for client in (on_a, on_b):
            with pytest.raises(ApiError) as wrong:
                await client.login("guess@example.com", "wrong password")
            assert wrong.value.code == "invalid_credentials"
        with pytest.raises(ApiError) as limited:
            await on_a.login("guess@example.com", PASSWORD)  # even the right one, for now
        assert (limited.value.status, limited.value.code) == (429, "rate_limited")


async def test_without_workers_a_queued_run_can_be_cancelled_or_times_out(
    servers: tuple[str, str], tmp_path: Path
) -> None:
    async with two_nodes(servers, tmp_path, queue_timeout=1.5, sweep_interval=0.2) as (on_a, on_b):
        await on_a.register("queued@example.com", PASSWORD)
        await on_b.login("queued@example.com", PASSWORD)
        cancelled = (await on_a.chat("cancel me"))["run"]["id"]
        expired = (await on_a.chat("nobody takes me"))["run"]["id"]
        assert (await on_b.request("GET", f"/runs/{cancelled}"))["state"] == "pending"
        await on_b.request("POST", f"/runs/{cancelled}/cancel")  # queued: ended by node B
        assert (await on_a.request("GET", f"/runs/{cancelled}"))["state"] == "cancelled"
        events = await on_a.events(cancelled)
        assert [(e["seq"], e["type"], e["data"]) for e in events] == [
            (1, "agent_cancelled", {"reason": "user"})
        ]
        for _ in range(100):
            run = await on_b.request("GET", f"/runs/{expired}")
            if run["state"] != "pending":
                break
            await asyncio.sleep(0.1)
        assert run["state"] == "timeout"
        assert run["error"]["code"] == "queue_timeout"
        events = await on_b.events(expired)
        assert [(e["seq"], e["type"], e["data"]["code"]) for e in events] == [
            (1, "agent_error", "queue_timeout")
        ]


def services_of(server: Any) -> Any:
    """The ``Services`` of a running server (to look at its session cache)."""
    app = server.config.loaded_app
    while getattr(getattr(app, "state", None), "services", None) is None:
        app = app.app
    return app.state.services


async def test_a_logout_on_one_node_is_refused_at_once_by_the_other(
    servers: tuple[str, str], tmp_path: Path
) -> None:
    """Node B caches the verified session (no database read per request); a logout on
    node A reaches B's cache through Redis well before the cache's own lifetime ends."""
    postgres, redis_url = servers
    database_url = await asyncio.to_thread(create_database, postgres)
    shared = {"database_url": database_url, "redis_url": redis_url,
              "secret_key": secrets.token_urlsafe(48), "session_cache_seconds": 600.0}  # fmt: skip
    async with (
        running_server(make_settings(tmp_path / "a", **shared)) as (node_a, _),
        running_server(make_settings(tmp_path / "b", **shared)) as (node_b, server_b),
        AtollClient(node_a) as on_a,
        AtollClient(node_b) as on_b,
    ):
        cache = services_of(server_b).auth.sessions
        for _ in range(100):  # B subscribes to revocations in the background
            if cache.trusted:
                break
            await asyncio.sleep(0.05)
        assert cache.trusted
        await on_a.register("revoked@example.com", PASSWORD)
        on_b.access_token = on_a.access_token
        await on_b.request("GET", "/me")
        hits = cache.hits
        assert (await on_b.request("GET", "/me"))["email"] == "revoked@example.com"
        assert cache.hits == hits + 1  # served from B's cache
        await on_a.logout()
        refused = None
        for _ in range(50):  # 5 s at most, against a cache lifetime of 600 s
            try:
                await on_b.request("GET", "/me")
            except ApiError as exc:
                refused = exc
                break
            await asyncio.sleep(0.1)
        assert refused is not None
        assert (refused.status, refused.code) == (401, "session_revoked")


async def test_a_rename_on_one_node_reaches_the_user_s_socket_on_the_other(
    servers: tuple[str, str], tmp_path: Path
) -> None:
    """Thread notices go through the user's Redis stream like run events do."""
    async with two_nodes(servers, tmp_path) as (on_a, on_b):
        await on_a.register("tabs@example.com", PASSWORD)
        on_b.access_token = on_a.access_token
        thread = await on_a.request("POST", "/threads", json={"title": "before"})
        async with on_b.connect() as socket:
            await socket.ping()  # subscribed on B from here on
            await on_a.request("PATCH", f"/threads/{thread['id']}", json={"title": "after"})
            async with asyncio.timeout(10):
                frame = await socket.receive()
                while frame["type"] != "thread_updated":
                    frame = await socket.receive()
        assert frame["thread"] == {**frame["thread"], "id": thread["id"], "title": "after"}


async def test_two_tabs_refreshing_on_two_nodes_get_the_same_pair(
    servers: tuple[str, str], tmp_path: Path
) -> None:
    """F4 across nodes: which refresh rotates is decided in PostgreSQL, and the other node
    answers with the same pair (nothing of it lives in a process)."""
    async with two_nodes(servers, tmp_path) as (on_a, on_b):
        await on_a.register("tabs@example.com", PASSWORD)
        body = {"refresh_token": on_a.refresh_token}
        answers = await asyncio.gather(
            on_a.http.post("/api/v1/auth/refresh", json=body),
            on_b.http.post("/api/v1/auth/refresh", json=body),
        )
        assert [answer.status_code for answer in answers] == [200, 200]
        pairs = {(a.json()["access_token"], a.json()["refresh_token"]) for a in answers}
        assert len(pairs) == 1
        on_b.access_token, on_b.refresh_token = next(iter(pairs))
        assert (await on_b.request("GET", "/me"))["email"] == "tabs@example.com"
        await on_b.refresh()  # the family goes on, on either node


async def test_a_key_revoked_on_one_node_ends_its_socket_and_stream_on_the_other(
    servers: tuple[str, str], tmp_path: Path
) -> None:
    """Issue 24: a program's socket and streamed POST are open on node B with an API key;
    the key is revoked on node A. B hears it through Redis (its own check of open sessions
    is a minute away here): the socket closes with 4401 and the stream ends with its error
    event, though the run (queued: no workers) has not ended."""
    postgres, redis_url = servers
    database_url = await asyncio.to_thread(create_database, postgres)
    shared = {"database_url": database_url, "redis_url": redis_url,
              "secret_key": secrets.token_urlsafe(48), "session_check_seconds": 60.0}  # fmt: skip
    async with (
        running_server(make_settings(tmp_path / "a", **shared)) as (node_a, _),
        running_server(make_settings(tmp_path / "b", **shared)) as (node_b, server_b),
        AtollClient(node_a) as ada,
        AtollClient(node_b) as program,
        httpx.AsyncClient(base_url=node_b, timeout=30) as http,
    ):
        cache = services_of(server_b).auth.sessions
        for _ in range(100):  # B subscribes to revocations in the background
            if cache.trusted:
                break
            await asyncio.sleep(0.05)
        assert cache.trusted
        await ada.register("program@example.com", PASSWORD)
        made = await ada.request("POST", "/keys", json={"name": "program"})
        program.access_token = made["key"]
        headers = {"Authorization": f"Bearer {made['key']}", "Accept": "text/event-stream"}
        async with (
            program.connect() as socket,
            http.stream(
                "POST", "/api/v1/chat", json={"message": "queued"}, headers=headers
            ) as answer,
        ):
            assert answer.status_code == 200
            lines = answer.aiter_lines()
            assert await anext(lines) == "event: ack"  # subscribed on B from here on
            await ada.request("DELETE", f"/keys/{made['id']}")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(until_closed(socket), 10)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "session_revoked")
            rest = await asyncio.wait_for(remaining(lines), 10)
        assert not any(line.startswith("id: ") for line in rest)  # no event of the run: pending
        ending = rest.index("event: error")
        error = json.loads(rest[ending + 1].removeprefix("data: "))
        assert (error["type"], error["code"]) == ("error", "session_revoked")


async def until_closed(socket: Any) -> None:
    """Read the socket until the server closes it."""
    while True:
        await socket.receive()


async def remaining(lines: AsyncIterator[str]) -> list[str]:
    """The rest of a stream's lines, until the server ends it."""
    return [line async for line in lines]
