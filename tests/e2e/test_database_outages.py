"""The chaos of storage: a full disk under SQLite, a PostgreSQL that stops and restarts.

While the database cannot serve, every request that needs it answers 503 problem JSON
with a stable code (``storage_full`` / ``unavailable``) and ``Retry-After`` — never a
500, never a dropped connection (uvicorn drops the connection of any request whose
error escapes as "Exception in ASGI application") — reads that can be served are,
``/readyz`` says what is wrong, and once the database is back the same ``atoll serve``
serves again without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from atoll.client import AtollClient, ends_run

from disks import fill, small_disk
from postgres import create_database, postgres_process
from serving import PASSWORD, ServeProcess, serve_process

pytestmark = [pytest.mark.e2e]

WRITE_REFUSED = {"storage_full": "30", "unavailable": "5"}
"""Each code of a refused request, and its ``Retry-After``."""


def assert_refused(response: httpx.Response, code: str) -> None:
    """A 503 problem with ``code`` and its ``Retry-After`` (problem JSON or OpenAI's shape)."""
    assert response.status_code == 503, response.text
    body = response.json()
    assert (body.get("error") or body)["code"] == code, body
    assert response.headers["retry-after"] == WRITE_REFUSED[code]


async def wait_ready(http: httpx.AsyncClient) -> dict[str, Any]:
    """``/readyz`` once it answers 200 (polled, for at most 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        answer = await http.get("/readyz")
        if answer.status_code == 200:
            return dict(answer.json())
        assert time.monotonic() < deadline, answer.json()
        await asyncio.sleep(0.1)


async def chat_to_the_end(client: AtollClient, text: str) -> list[dict[str, Any]]:
    """Send ``text`` over the socket; the run's events up to its terminal one."""
    async with client.connect() as socket:
        ack = await socket.send_message(text)
        assert ack["type"] == "ack", ack
        return [event async for event in socket.run_events(ack["run_id"])]


@contextlib.asynccontextmanager
async def raw_socket(base: str, token: str) -> AsyncIterator[Any]:
    """A WebSocket authenticated by header, before anything is read from it."""
    url = base.replace("http", "ws", 1) + "/api/v1/ws"
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(url, additional_headers=headers) as connection:
        yield connection


def no_escaped_errors(server: ServeProcess) -> None:
    """Nothing reached uvicorn as an unhandled error (which drops the connection)."""
    assert "Exception in ASGI application" not in server.log_text()


async def test_a_full_disk_refuses_writes_with_503_serves_reads_and_recovers(
    tmp_path: Path,
) -> None:
    with (
        small_disk(tmp_path / "disk", 32) as disk,
        serve_process(disk, ATOLL_MIN_FREE_MB="1") as server,
    ):
        async with AtollClient(server.url) as ada:
            await ada.register("ada@example.com", PASSWORD)
            events = await chat_to_the_end(ada, "What is 6*7?")
            run_id, thread_id = events[-1]["run_id"], events[-1]["thread_id"]
            key = (await ada.request("POST", "/keys", json={"name": "k", "scopes": ["chat"]}))[
                "key"
            ]
            filler = fill(disk)

            auth = {"Authorization": f"Bearer {ada.access_token}"}
            http = ada.http  # one keep-alive connection pool for every request below
            ready = await http.get("/readyz")
            assert (ready.status_code, ready.json()["database"]) == (503, "storage_full")

            assert_refused(
                await http.post("/api/v1/threads", json={}, headers=auth), "storage_full"
            )
            chat = await http.post("/api/v1/chat", json={"message": "hi"}, headers=auth)
            assert_refused(chat, "storage_full")
            streamed = await http.post(
                "/api/v1/chat", json={"message": "hi"},
                headers={**auth, "Accept": "text/event-stream"},
            )  # fmt: skip
            assert_refused(streamed, "storage_full")
            login = {"email": "ada@example.com", "password": PASSWORD}
            assert_refused(await http.post("/api/v1/auth/login", json=login), "storage_full")
            completion = await http.post(
                "/v1/chat/completions",
                json={"model": "assistant", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert_refused(completion, "storage_full")

            # Reads are served from the full disk.
            assert (await ada.request("GET", "/me"))["email"] == "ada@example.com"
            threads = await ada.request("GET", "/threads")
            assert [t["id"] for t in threads["items"]] == [thread_id]
            messages = await ada.request("GET", f"/threads/{thread_id}/messages")
            assert [m["role"] for m in messages["items"]] == ["user", "assistant"]
            assert await ada.events(run_id) == events

            async with ada.connect() as socket:  # the socket door: the same code, still open
                refused = await socket.send_message("hi")
                assert (refused["type"], refused["code"]) == ("error", "storage_full")
                assert refused["retry_after"] == 30
                assert (await socket.ping())["type"] == "pong"
            no_escaped_errors(server)

            filler.unlink()
            assert (await wait_ready(http))["database"] == "ok"
            assert (await ada.request("POST", "/threads", json={}))["id"]
            answer = await chat_to_the_end(ada, "What is 17*23?")
            assert ends_run(answer[-1]) and "391" in answer[-1]["data"]["message"]["content"]
            await ada.login("ada@example.com", PASSWORD)
        no_escaped_errors(server)


async def outage_answers(server: ServeProcess, ada: AtollClient) -> None:
    """What a stopped PostgreSQL looks like from outside: 503 ``unavailable`` everywhere."""
    auth = {"Authorization": f"Bearer {ada.access_token}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()["database"]) == (503, "unavailable")
        assert_refused(await http.get("/api/v1/me", headers=auth), "unavailable")
        assert_refused(await http.get("/api/v1/threads", headers=auth), "unavailable")
        assert_refused(await http.post("/api/v1/threads", json={}, headers=auth), "unavailable")
        chat = await http.post("/api/v1/chat", json={"message": "hi"}, headers=auth)
        assert_refused(chat, "unavailable")
        login = {"email": "ada@example.com", "password": PASSWORD}
        assert_refused(await http.post("/api/v1/auth/login", json=login), "unavailable")
    assert ada.access_token is not None
    async with raw_socket(server.url, ada.access_token) as connection:
        frame = json.loads(await connection.recv())  # the session cannot be read: said so
        assert (frame["type"], frame["code"], frame["retry_after"]) == ("error", "unavailable", 5)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await connection.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013


async def load_through(restart: asyncio.Future[None], base: str, token: str) -> list[str]:
    """Requests on one keep-alive connection until the restart is over and five more in a row
    succeeded; each answer as ``status`` or ``status code``."""
    seen: list[str] = []
    streak = 0
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base + "/api/v1", timeout=30, headers=auth) as http:
        for turn in range(5_000):
            answer = await (http.post("/threads", json={}) if turn % 2 else http.get("/threads"))
            if answer.status_code < 400:
                seen.append(str(answer.status_code))
                streak += 1
            else:
                assert_refused(answer, "unavailable")
                seen.append(f"{answer.status_code} {answer.json()['code']}")
                streak = 0
            if restart.done() and streak >= 5:
                return seen
            await asyncio.sleep(0)
    raise AssertionError(f"no recovery after {len(seen)} requests: {seen[-10:]}")


async def test_a_postgresql_outage_answers_503_and_the_node_recovers(tmp_path: Path) -> None:
    with postgres_process() as postgres:
        url = await asyncio.to_thread(create_database, postgres.url)
        with serve_process(
            tmp_path / "data", ATOLL_DATABASE_URL=url, ATOLL_SESSION_CACHE_SECONDS="0"
        ) as server:
            async with AtollClient(server.url) as ada:
                await ada.register("ada@example.com", PASSWORD)
                assert ends_run((await chat_to_the_end(ada, "What is 6*7?"))[-1])
                async with ada.connect() as socket:  # a socket open before the outage
                    await asyncio.to_thread(postgres.stop)
                    refused = await socket.send_message("hi")
                    assert (refused["type"], refused["code"]) == ("error", "unavailable")
                    assert (await socket.ping())["type"] == "pong"
                    await outage_answers(server, ada)
                    no_escaped_errors(server)
                    await asyncio.to_thread(postgres.start)

                await wait_ready(ada.http)
                answer = await chat_to_the_end(ada, "What is 17*23?")
                assert "391" in answer[-1]["data"]["message"]["content"]

                # pg_ctl -m immediate restart under load: every answer a success or a 503.
                assert ada.access_token is not None
                restart = asyncio.ensure_future(asyncio.to_thread(postgres.restart))
                loads = [load_through(restart, server.url, ada.access_token) for _ in range(3)]
                seen = [a for answers in await asyncio.gather(*loads) for a in answers]
                await restart
                assert set(seen) <= {"200", "201", "503 unavailable"}, set(seen)
                await wait_ready(ada.http)
                await ada.login("ada@example.com", PASSWORD)
            no_escaped_errors(server)
