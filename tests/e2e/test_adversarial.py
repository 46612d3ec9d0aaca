"""The standing adversarial suite: each case a hostile user tried, against a real server.

F1 CPU bombs · F2 concurrent login guesses · F3/F4 integers outside the storage
range · F5/F6 metadata that cannot be sent back · F7 oversized bodies · F8
per-address limits and audit flooding · F9 oversized and idle connections ·
F10 headers, token-in-URL logging, WebSocket origins, SSE streams per user.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import text

from atoll.client import AtollClient, ends_run
from atoll.config import Settings
from atoll.server.serve import AtollServer, running_server
from atoll.server.services import Services
from integration.fake_openai import API_KEY as FAKE_KEY
from integration.fake_openai import serve_fake_openai

from serving import PASSWORD, make_settings, serve_process
from support import until

pytestmark = [pytest.mark.e2e, pytest.mark.security]

BIG_INT = 9223372036854775808  # 2**63: past every integer column


def services_of(server: AtollServer) -> Services:
    services: Services = server.config.app.state.services
    return services


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, AtollServer]]:
    settings = make_settings(tmp_path / "data", plugins=["cpu_tools"], messages_per_minute=1000)
    async with running_server(settings) as (url, server):
        yield url, server


@pytest.fixture
def url(served: tuple[str, AtollServer]) -> str:
    return served[0]


async def registered(url: str, email: str) -> AtollClient:
    client = AtollClient(url)
    await client.register(email, PASSWORD)
    return client


async def answered_while(
    busy: Callable[[], bool], client: AtollClient, *, within: float = 20
) -> list[float]:
    """Call ``/me`` for ``client`` while ``busy()``; the latency of each answer (ms)."""
    latencies: list[float] = []
    deadline = time.monotonic() + within
    while busy() and time.monotonic() < deadline:
        started = time.perf_counter()
        await client.request("GET", "/me")
        if busy():
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


# -- F1: one user's input must not stall another's ---------------------------------


async def test_f1_the_calculator_refuses_a_power_too_large_before_computing_it(url: str) -> None:
    attacker, other = await registered(url, "bomb@example.com"), await registered(url, "b@x.io")
    accepted = await attacker.chat("What is (9**4000)**5000?", agent="assistant")
    events = [e async for e in attacker.stream(accepted["run"]["id"])]
    tool = next(e for e in events if e["type"] == "tool_completed")
    assert tool["data"]["ok"] is False
    assert tool["data"]["error"]["message"] == "result is too large"
    assert tool["data"]["duration_ms"] < 1000
    assert events[-1]["type"] == "agent_completed"
    assert (await other.request("GET", "/me"))["email"] == "b@x.io"


async def test_f1_a_cpu_bound_tool_cannot_stall_another_user(url: str) -> None:
    attacker, other = await registered(url, "spin@example.com"), await registered(url, "o@x.io")
    async with attacker.connect() as socket:
        ack = await socket.send_message("30", agent="spinner")
        seen: list[str] = []

        async def follow() -> None:
            async for event in socket.run_events(ack["run_id"]):
                seen.append(event["type"])

        follower = asyncio.create_task(follow())
        await until(lambda: "tool_executing" in seen, within=10, what="the bomb started")

        def bomb_running() -> bool:
            return "tool_completed" not in seen

        latencies = await answered_while(bomb_running, other)
        await asyncio.wait_for(follower, 20)
    # The second user was answered while the bomb ran (the 2 s tool timeout then killed it).
    assert latencies, "no answer reached the second user while the tool ran"
    events = await attacker.events(ack["run_id"])
    completed = next(e for e in events if e["type"] == "tool_completed")
    assert completed["data"]["error"]["code"] == "tool_timeout"
    assert events[-1]["data"]["message"]["content"] == "spin failed: tool_timeout"


CALCULATOR_BOMBS = [
    "round(9, -10**7)",  # round computes 10**N inside: 78 s on the event loop before
    "round(9**4500, -10**9)",
    "9**4500 * 9**4500 * 9**4500 * 9**4500",
    "(2**9999 // 3) * (2**9999 // 7) * 2**9999",
]


@pytest.mark.parametrize("expression", CALCULATOR_BOMBS)
async def test_f1_a_model_calling_the_calculator_with_a_bomb_costs_nobody_anything(
    tmp_path: Path, expression: str
) -> None:
    """A real model follows its user: it calls the calculator with whatever it is told."""
    async with serve_fake_openai() as fake:
        model = {"llm_provider": "openai", "llm_base_url": fake.base_url,
                 "llm_api_key": FAKE_KEY, "llm_model": "fake-model"}  # fmt: skip
        settings = make_settings(tmp_path / "data", **model)
        async with running_server(settings) as (url, _):
            attacker, other = await registered(url, "round@x.io"), await registered(url, "o@x.io")
            arguments = json.dumps({"expression": expression})
            accepted = await attacker.chat(f"call: calculator {arguments}", agent="assistant")
            events = [e async for e in attacker.stream(accepted["run"]["id"])]
            assert (await other.request("GET", "/me"))["email"] == "o@x.io"
    completed = next(e for e in events if e["type"] == "tool_completed")
    assert completed["data"]["ok"] is False
    assert completed["data"]["error"]["code"] == "tool_error"
    assert events[-1]["type"] == "agent_completed"
    assert "Tool said:" in events[-1]["data"]["message"]["content"]


# -- F2: limits that hold under concurrency ----------------------------------------


async def test_f2_a_burst_of_wrong_passwords_gets_at_most_the_limit_through(url: str) -> None:
    owner = await registered(url, "target@example.com")
    await owner.aclose()
    body = {"email": "target@example.com", "password": "wrong password!"}
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        guesses = [http.post("/api/v1/auth/login", json=body) for _ in range(100)]
        right = http.post(
            "/api/v1/auth/login", json={"email": "target@example.com", "password": PASSWORD}
        )
        answers = await asyncio.gather(*guesses[:50], right, *guesses[50:])
    statuses = [a.status_code for a in answers]
    assert statuses.count(401) <= 10
    assert statuses.count(401) + statuses.count(429) == 101 - (statuses[50] == 200)
    assert statuses[50] == 429, "the right password inside the burst is refused while locked"
    assert all(a.json()["code"] == "rate_limited" for a in answers if a.status_code == 429)
    assert all("retry-after" in a.headers for a in answers if a.status_code == 429)


async def test_f8_a_stranger_cannot_lock_the_owner_out_and_spraying_is_slowed(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "data", login_failures_per_address=15)
    async with running_server(settings) as (url, _):
        await (await registered(url, "owner@example.com")).aclose()
        stranger = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with (
            httpx.AsyncClient(base_url=url, transport=stranger) as attacker,
            httpx.AsyncClient(base_url=url) as owner,
        ):
            wrong = {"email": "owner@example.com", "password": "not the password"}
            tries = [(await attacker.post("/api/v1/auth/login", json=wrong)).status_code]
            tries += [(await attacker.post("/api/v1/auth/login", json=wrong)).status_code]
            while tries[-1] == 401 and len(tries) < 20:
                tries.append((await attacker.post("/api/v1/auth/login", json=wrong)).status_code)
            assert tries == [401] * 10 + [429]
            right = {"email": "owner@example.com", "password": PASSWORD}
            assert (await owner.post("/api/v1/auth/login", json=right)).status_code == 200
            # Spraying many emails from one address is stopped by the per-address limit.
            sprayed = [
                (
                    await attacker.post(
                        "/api/v1/auth/login",
                        json={"email": f"u{n}@example.com", "password": "guess guess"},
                    )
                ).status_code
                for n in range(10)
            ]
            assert sprayed[:4] == [401] * 4 and set(sprayed[5:]) == {429}


async def test_f8_sign_ups_are_limited_per_address(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", signups_per_hour=5)
    async with running_server(settings) as (url, _), httpx.AsyncClient(base_url=url) as http:
        statuses = [
            (
                await http.post(
                    "/api/v1/auth/register",
                    json={"email": f"new{n}@example.com", "password": PASSWORD},
                )
            ).status_code
            for n in range(8)
        ]
        assert statuses == [201] * 5 + [429] * 3
        bad = await http.post("/api/v1/auth/register", json={"email": "x", "password": "p"})
        assert bad.status_code == 422  # bad input is refused before it costs a sign-up


async def test_f8_refused_tokens_cannot_flood_the_audit_log(
    served: tuple[str, AtollServer],
) -> None:
    url, server = served
    async with httpx.AsyncClient(base_url=url) as http:
        for n in range(300):
            answer = await http.get("/api/v1/me", headers={"authorization": f"Bearer junk{n}"})
            assert answer.status_code == 401
    services = services_of(server)
    denied = [e for e in await services.audit.entries(limit=1000) if e.action == "access_denied"]
    assert 1 <= len(denied) <= 10
    assert services.audit.suppressed >= 290


# -- F3/F4: integers outside the storage range ---------------------------------------


async def test_f3_f4_out_of_range_integers_get_422_never_500(url: str) -> None:
    client = await registered(url, "ranges@example.com")
    run = (await client.chat("What is 1+1?"))["run"]["id"]
    assert [e async for e in client.stream(run)][-1]["type"] == "agent_completed"
    headers = {"authorization": f"Bearer {client.access_token}"}
    big_cursor = base64.urlsafe_b64encode(b"99999999999999999999").decode().rstrip("=")
    negative = base64.urlsafe_b64encode(b"-99999999999999999999").decode().rstrip("=")
    thread = (await client.request("GET", "/threads"))["items"][0]["id"]
    async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers) as http:
        for path in (
            f"/runs/{run}/events?after={BIG_INT}",
            f"/runs/{run}/events?after=2147483648",
            f"/threads?cursor={big_cursor}",
            f"/threads?cursor={negative}",
            f"/threads/{thread}/messages?cursor={big_cursor}",
            "/threads?limit=99999999999999999999",
            "/threads?limit=10.0",
            f"/runs/{run}/events?after=0.0",
            f"/runs/{run}/events?after=1&after=2",
        ):
            answer = await http.get(path)
            assert answer.status_code == 422, path
            assert answer.json()["code"] == "validation_error"
        for value in (b"99999999999999999999", b"\xb2", b"1\xb2", b"12x", b"-1", b"+3"):
            answer = await http.get(f"/runs/{run}/stream", headers={"last-event-id": value})
            assert answer.status_code == 422, value
        ok = await http.get(f"/runs/{run}/stream", headers={"last-event-id": "2"})
        assert ok.status_code == 200 and "id: 3\n" in ok.text
    async with client.connect() as socket:
        await socket.send({"type": "resume", "run_id": run, "after": BIG_INT})
        error = await socket.receive()
        assert (error["type"], error["code"]) == ("error", "validation_error")
        assert (await socket.ping()) == {"type": "pong"}  # the socket stays open, no 1011


# -- F5/F6/F7: JSON that cannot be stored and sent back ---------------------------------


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


async def test_repeated_query_parameters_get_422_naming_them(url: str) -> None:
    """A repeated parameter is refused, not read as whichever copy comes first; a URL
    made of thousands of them (as long as the header limit allows) is answered at once."""
    client = await registered(url, "repeats@example.com")
    headers = {"authorization": f"Bearer {client.access_token}"}
    async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers) as http:
        answer = await http.get("/threads?limit=1&limit=100")
        assert answer.status_code == 422
        assert [e["loc"] for e in answer.json()["errors"]] == [["query", "limit"]]
        many = "&".join(f"k{n % 500}=1" for n in range(1000))  # ~7 KB, 500 repeated keys
        answer = await http.get(f"/threads?{many}")
        assert answer.status_code == 422
        assert len(answer.json()["errors"]) == 500


async def test_f5_f6_f7_metadata_is_checked_by_round_trip_and_size(url: str) -> None:
    client = await registered(url, "meta@example.com")
    headers = {"authorization": f"Bearer {client.access_token}", "content-type": "application/json"}
    bodies = [
        json.dumps({"metadata": nested(300)}),
        '{"metadata": {"x": "\\udfff"}}',
        '{"title": "\\ud800 lone"}',
        json.dumps({"metadata": {"x": "y" * 20_000}}),
        '{"metadata": {"n": NaN}}',
        '{"metadata": {"n": [1, -Infinity]}}',
    ]
    async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers) as http:
        for body in bodies:
            answer = await http.post("/threads", content=body)
            assert answer.status_code == 422, body[:40]
            assert answer.json()["code"] == "validation_error"
        huge = await http.post("/threads", content=json.dumps({"metadata": {"x": "y" * (3 << 20)}}))
        assert (huge.status_code, huge.json()["code"]) == (413, "too_large")
        fine = await http.post("/threads", json={"metadata": nested(16)})
        assert fine.status_code == 201
        exact = await http.post("/threads", json={"metadata": {"n": 2**70, "f": 1e-300}})
        assert exact.json()["metadata"] == {"n": 2**70, "f": 1e-300}  # what is stored comes back
        chat = await http.post("/chat", content='{"message": "hi", "metadata": {"x": "\\udfff"}}')
        assert chat.status_code == 422
        nameless = await http.post("/chat", json={"message": "hi", "agent": ""})
        assert (nameless.status_code, nameless.json()["code"]) == (422, "unknown_agent")
        assert (await http.get("/threads")).status_code == 200


async def test_f5_f6_metadata_stored_by_an_older_version_does_not_break_listings(
    served: tuple[str, AtollServer],
) -> None:
    url, server = served
    client = await registered(url, "legacy@example.com")
    thread = await client.request("POST", "/threads", json={"title": "old"})
    # What the old code stored: a lone surrogate and a 300-deep object, as JSON text.
    legacy = json.dumps({"bad": "\udfff", "deep": nested(300)})
    async with services_of(server).db.engine.begin() as connection:
        statement = text("UPDATE threads SET metadata = :meta WHERE id = :id")
        await connection.execute(statement, {"meta": legacy, "id": thread["id"]})
    listing = await client.request("GET", "/threads")
    (item,) = [t for t in listing["items"] if t["id"] == thread["id"]]
    assert item["metadata"] == {} and "replace it" in item["metadata_error"]
    assert (await client.request("GET", f"/threads/{thread['id']}"))["metadata"] == {}
    repaired = await client.request("PATCH", f"/threads/{thread['id']}", json={"metadata": {}})
    assert repaired["metadata_error"] is None


# -- F9: connections that are too big or never speak ------------------------------------


def raw_exchange(port: int, request: bytes, *, wait: float = 60) -> bytes:
    """Send ``request`` (maybe nothing) and return the first answer (``b""`` if none came
    within ``wait`` seconds, far past the server's header deadline)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        if request:
            sock.sendall(request)
        try:
            return sock.recv(4096)
        except TimeoutError:
            return b""


async def test_f9_oversized_upgrades_and_idle_connections_are_answered(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", http_header_timeout=1.0)
    async with running_server(settings) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        upgrade = (
            b"GET /api/v1/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nX-Big: " + b"x" * 10_000 + b"\r\n\r\n"
        )
        answer = await asyncio.to_thread(raw_exchange, port, upgrade)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
        for request in (b"", b"GET /healthz HTTP/1.1\r\nHost: loc"):
            answer = await asyncio.to_thread(raw_exchange, port, request)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:80]  # not a silent close


# -- F10: HTTP hygiene -----------------------------------------------------------------


async def test_f10_security_headers_on_the_page_static_files_docs_and_api(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        for path in ("/", "/static/app.js", "/docs", "/api/v1/me", "/healthz"):
            answer = await http.get(path)
            csp = answer.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp, path
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["referrer-policy"] == "no-referrer"
            assert "camera=()" in answer.headers["permissions-policy"]
        page = await http.get("/")
        assert "script-src 'self';" in page.headers["content-security-policy"]


async def test_f10_the_websocket_refuses_foreign_origins(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", allowed_origins=["https://app.example.com"])
    async with running_server(settings) as (url, _):
        client = await registered(url, "origin@example.com")
        ws_url = url.replace("http", "ws") + "/api/v1/ws"
        host = url.removeprefix("http://")
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(ws_url, origin="https://evil.example")  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        for origin in (f"http://{host}", "https://app.example.com", None):
            async with websockets.connect(ws_url, origin=origin) as ws:  # type: ignore[arg-type]
                await ws.send(json.dumps({"type": "auth", "token": client.access_token}))
                assert json.loads(await ws.recv())["type"] == "connection_established"


async def test_f10_a_user_cannot_hold_unlimited_sse_streams(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", max_sse_streams=3, offline_token_delay=0.5)
    async with running_server(settings) as (url, _):
        client = await registered(url, "streams@example.com")
        run = (await client.chat("What is 2+2?", agent="assistant"))["run"]["id"]
        headers = {"authorization": f"Bearer {client.access_token}"}
        async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers) as http:
            streams = [http.stream("GET", f"/runs/{run}/stream") for _ in range(3)]
            opened = [await s.__aenter__() for s in streams]
            assert all(o.status_code == 200 for o in opened)
            refused = await http.get(f"/runs/{run}/stream")
            assert (refused.status_code, refused.json()["code"]) == (429, "too_many_streams")
            for stream in streams:
                await stream.__aexit__(None, None, None)
            await until(lambda: True)
            again = [e async for e in client.stream(run)]  # a slot is free once one closes
            assert ends_run(again[-1])


async def test_f10_tokens_in_urls_never_reach_the_access_log(tmp_path: Path) -> None:
    with serve_process(tmp_path / "data") as server:
        secret = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2VuLXZhbHVl.sig"
        async with httpx.AsyncClient(base_url=server.url) as http:
            answer = await http.get(f"/api/v1/me?access_token={secret}&x=1")
            assert answer.status_code == 401
            await http.get(f"/healthz?token={secret}")
        await until(lambda: "/healthz?token=" in server.log_text(), what="the access log line")
        log = server.log_text()
        assert secret not in log
        assert "access_token=[redacted]&x=1" in log


async def test_docs_and_metrics_can_be_switched_off_or_protected(tmp_path: Path) -> None:
    settings: Settings = make_settings(
        tmp_path / "data", docs_enabled=False, metrics_token="scrape-secret-0123"
    )
    async with running_server(settings) as (url, _), httpx.AsyncClient(base_url=url) as http:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await http.get(path)).status_code == 404
        assert (await http.get("/metrics")).status_code == 401
        wrong = await http.get("/metrics", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = await http.get("/metrics", headers={"authorization": "Bearer scrape-secret-0123"})
        assert right.status_code == 200 and "atoll_runs" in right.text
