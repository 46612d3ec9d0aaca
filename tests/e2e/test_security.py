"""Security rules on a real server: credentials, tokens, sessions, isolation, rate limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets

from atoll.client import ApiError, AtollClient
from atoll.server.serve import running_server
from atoll.store.audit import AuditLog
from atoll.store.db import Database, sqlite_url

from serving import PASSWORD, make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.security]

SECRET = "test-signing-key-0123456789abcdef0123456789abcdef"


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[str]:
    settings = make_settings(tmp_path / "data", secret_key=SECRET, offline_token_delay=0.05)
    async with running_server(settings) as (url, _):
        yield url


async def register(url: str, email: str) -> AtollClient:
    client = AtollClient(url)
    await client.register(email, PASSWORD)
    return client


def forged(token: str, *, key: str = SECRET, algorithm: str = "HS256", **changes: Any) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update(changes)
    if algorithm == "none":
        return jwt.encode(claims, None, algorithm="none")
    return jwt.encode(claims, key, algorithm=algorithm)


async def ws_close_code(url: str, *, header: str | None = None, frame: str | None = None) -> int:
    ws_url = url.replace("http", "ws", 1) + "/api/v1/ws"
    headers = {"Authorization": header} if header else None
    async with websockets.connect(ws_url, additional_headers=headers) as socket:
        if frame is not None:
            await socket.send(frame)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), 15)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_wrong_password_and_unknown_email_look_identical(secured: str) -> None:
    await (await register(secured, "known@example.com")).aclose()
    async with httpx.AsyncClient(base_url=secured) as http:
        wrong = await http.post(
            "/api/v1/auth/login", json={"email": "known@example.com", "password": "nope-nope-1"}
        )
        unknown = await http.post(
            "/api/v1/auth/login", json={"email": "ghost@example.com", "password": "nope-nope-1"}
        )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["code"] == "invalid_credentials"
    assert wrong.headers["content-type"] == "application/problem+json"


BAD_TOKENS: dict[str, Callable[[str], str]] = {
    "expired": lambda t: forged(t, exp=int(time.time()) - 60, iat=int(time.time()) - 120),
    "tampered": lambda t: t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB"),
    "alg_none": lambda t: forged(t, algorithm="none"),
    "wrong_audience": lambda t: forged(t, aud="someone-else"),
    "wrong_issuer": lambda t: forged(t, iss="evil"),
    "wrong_key": lambda t: forged(t, key="another-key-0123456789abcdef0123456789abcdef"),
    "refresh_as_access": lambda t: forged(t, typ="refresh"),
    "other_session": lambda t: forged(t, sid="ses_doesnotexist000000"),
    "garbage": lambda t: "not-a-jwt",
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_tokens_are_refused_on_http_and_websocket(secured: str, kind: str) -> None:
    client = await register(secured, f"{kind.replace('_', '')}@example.com")
    assert client.access_token is not None
    token = BAD_TOKENS[kind](client.access_token)
    await client.aclose()
    async with httpx.AsyncClient(base_url=secured) as http:
        answer = await http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401
    expected = "token_expired" if kind == "expired" else "invalid_token"
    assert answer.json()["code"] == expected
    assert await ws_close_code(secured, header=f"Bearer {token}") == 4401
    assert await ws_close_code(secured, frame=f'{{"type": "auth", "token": "{token}"}}') == 4401


async def test_websocket_auth_rules(secured: str) -> None:
    assert await ws_close_code(secured, frame='{"type": "ping"}') == 4401
    assert await ws_close_code(secured, frame="not json") == 4401
    assert await ws_close_code(secured, header="Basic abc") == 4401


async def test_two_tabs_refreshing_at_once_both_stay_signed_in(secured: str) -> None:
    """F4: concurrent refreshes with one token all get the same new pair, which works."""
    client = await register(secured, "tabs@example.com")
    body = {"refresh_token": client.refresh_token}
    async with (
        httpx.AsyncClient(base_url=secured) as tab1,
        httpx.AsyncClient(base_url=secured) as tab2,
    ):
        answers = await asyncio.gather(
            tab1.post("/api/v1/auth/refresh", json=body),
            tab2.post("/api/v1/auth/refresh", json=body),
            tab1.post("/api/v1/auth/refresh", json=body),
        )
        assert [a.status_code for a in answers] == [200, 200, 200]
        pairs = {(a.json()["access_token"], a.json()["refresh_token"]) for a in answers}
        assert len(pairs) == 1
        ((access, refresh),) = pairs
        me = await tab2.get("/api/v1/me", headers={"Authorization": f"Bearer {access}"})
        assert me.status_code == 200
        following = await tab1.post("/api/v1/auth/refresh", json={"refresh_token": refresh})
        assert following.status_code == 200
    await client.aclose()


async def test_a_spent_refresh_token_two_rotations_old_revokes_the_session(
    secured: str,
) -> None:
    client = await register(secured, "refresh@example.com")
    old_refresh = client.refresh_token
    await client.refresh()
    await client.refresh()  # old_refresh is no longer the one just spent
    assert client.refresh_token != old_refresh
    assert (await client.request("GET", "/me"))["email"] == "refresh@example.com"
    async with httpx.AsyncClient(base_url=secured) as http:
        reused = await http.post("/api/v1/auth/refresh", json={"refresh_token": old_refresh})
        assert reused.status_code == 401
        assert reused.json()["code"] == "refresh_reused"
        with pytest.raises(ApiError) as info:
            await client.request("GET", "/me")
        assert info.value.code == "session_revoked"
        again = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": client.refresh_token}
        )
        assert again.status_code == 401
    await client.aclose()


async def test_reuse_after_the_interval_revokes_the_session_and_closes_its_sockets(
    tmp_path: Path,
) -> None:
    """With no reuse interval every spent token presented again is reuse: the session ends,
    and its open socket closes with 4401 on this server too (not only through Redis)."""
    settings = make_settings(tmp_path / "data", secret_key=SECRET, refresh_reuse_seconds=0)
    async with running_server(settings) as (url, _):
        client = await register(url, "strict@example.com")
        spent = client.refresh_token
        async with client.connect() as socket:
            await client.refresh()
            async with httpx.AsyncClient(base_url=url) as http:
                reused = await http.post("/api/v1/auth/refresh", json={"refresh_token": spent})
            assert (reused.status_code, reused.json()["code"]) == (401, "refresh_reused")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(socket.connection.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        with pytest.raises(ApiError) as info:
            await client.request("GET", "/me")
        assert info.value.code == "session_revoked"
        await client.aclose()


async def test_logout_kills_the_access_token_at_once(secured: str) -> None:
    client = await register(secured, "logout@example.com")
    await client.request("GET", "/me")
    async with client.connect() as socket:
        await client.logout()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.connection.recv(), 5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401  # its open socket is closed too
    with pytest.raises(ApiError) as info:
        await client.request("GET", "/me")
    assert info.value.status == 401
    assert await ws_close_code(secured, header=f"Bearer {client.access_token}") == 4401
    await client.aclose()


async def test_login_rate_limit(secured: str) -> None:
    await (await register(secured, "target@example.com")).aclose()
    async with httpx.AsyncClient(base_url=secured) as http:
        codes = []
        for _ in range(11):
            answer = await http.post(
                "/api/v1/auth/login",
                json={"email": "target@example.com", "password": "wrong-password"},
            )
            codes.append(answer.status_code)
        assert codes == [401] * 10 + [429]
        assert answer.json()["code"] == "rate_limited"
        assert int(answer.headers["Retry-After"]) > 0
        # Even the right password is refused while limited.
        right = await http.post(
            "/api/v1/auth/login", json={"email": "target@example.com", "password": PASSWORD}
        )
        assert right.status_code == 429


async def test_a_known_client_is_not_locked_out_by_strangers_at_its_address(
    tmp_path: Path,
) -> None:
    """Shared NAT: strangers' wrong passwords from the owner's address lock out every
    untrusted client, but not the owner's, which holds the device cookie its last login
    gave it (OWASP device cookies). The cookie is worth nothing for another account and
    stops helping after its own run of failures."""
    settings = make_settings(
        tmp_path / "data", secret_key=SECRET, login_failures_limit=3,
        login_failures_per_address=5,
    )  # fmt: skip
    login = "/api/v1/auth/login"
    owner_body = {"email": "owner@example.com", "password": PASSWORD}
    async with (
        running_server(settings) as (url, _),
        httpx.AsyncClient(base_url=url) as owner,
        httpx.AsyncClient(base_url=url) as stranger,
    ):
        registered = await owner.post("/api/v1/auth/register", json=owner_body)
        assert registered.status_code == 201
        cookie = registered.headers["set-cookie"].lower()
        assert cookie.startswith("atoll_device=")
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert "path=/api/v1/auth" in cookie and "secure" not in cookie  # plain http here
        assert "atoll_device" not in registered.text  # never in the body, nor a URL
        await (await register(url, "eve@example.com")).aclose()
        wrong = {"email": "owner@example.com", "password": "wrong password"}
        assert [(await stranger.post(login, json=wrong)).status_code for _ in range(4)] == [
            401, 401, 401, 429,
        ]  # fmt: skip
        spray = [{"email": f"user{n}@example.com", "password": "wrong password"} for n in range(3)]
        assert [(await stranger.post(login, json=body)).status_code for body in spray] == [
            401,
            401,
            429,
        ]  # fmt: skip: the address's limit (5 failures) is reached
        assert (await stranger.post(login, json=owner_body)).status_code == 429
        known = await owner.post(login, json=owner_body)
        assert known.status_code == 200, known.text
        device = owner.cookies["atoll_device"]
        async with httpx.AsyncClient(base_url=url, cookies={"atoll_device": device}) as thief:
            other = {"email": "eve@example.com", "password": PASSWORD}
            assert (await thief.post(login, json=other)).status_code == 429  # not Eve's cookie
        forged = device[:-2] + ("AA" if not device.endswith("AA") else "BB")
        async with httpx.AsyncClient(base_url=url, cookies={"atoll_device": forged}) as faker:
            assert (await faker.post(login, json=owner_body)).status_code == 429
        assert [(await owner.post(login, json=wrong)).status_code for _ in range(3)] == [401] * 3
        assert (await owner.post(login, json=owner_body)).status_code == 429  # trust spent


async def test_other_users_resources_answer_404_everywhere(secured: str, tmp_path: Path) -> None:
    ada = await register(secured, "ada@example.com")
    bob = await register(secured, "bob@example.com")
    async with ada.connect() as socket:
        ack = await socket.send_message("What is 2*21?")
        [e async for e in socket.run_events(ack["run_id"])]
    thread, run = ack["thread_id"], ack["run_id"]
    attempts = [
        ("GET", f"/threads/{thread}", None),
        ("PATCH", f"/threads/{thread}", {"title": "mine now"}),
        ("DELETE", f"/threads/{thread}", None),
        ("GET", f"/threads/{thread}/messages", None),
        ("POST", f"/threads/{thread}/runs", {"message": "hi"}),
        ("POST", "/chat", {"message": "hi", "thread_id": thread}),
        ("GET", f"/runs/{run}", None),
        ("GET", f"/runs/{run}/events", None),
        ("GET", f"/runs/{run}/stream", None),
        ("POST", f"/runs/{run}/cancel", None),
    ]
    for method, path, body in attempts:
        with pytest.raises(ApiError) as info:
            await bob.request(method, path, json=body)
        assert (info.value.status, info.value.code) == (404, "not_found"), (method, path)
        missing = path.replace(thread, "thr_missing000000000000").replace(run, "run_missing00000")
        with pytest.raises(ApiError) as absent:
            await bob.request(method, missing, json=body)
        assert absent.value.problem == info.value.problem, (method, path)
    async with bob.connect() as socket:
        await socket.send({"type": "cancel", "run_id": run})
        assert (await socket.receive())["code"] == "not_found"
        await socket.send({"type": "resume", "run_id": run, "after": 0})
        assert (await socket.receive())["code"] == "not_found"
        await socket.send({"type": "message", "content": "hi", "thread_id": thread})
        assert (await socket.receive())["code"] == "not_found"
        assert (await socket.ping())["type"] == "pong"  # nothing of Ada's ever arrived
    assert (await bob.request("GET", "/threads"))["items"] == []
    # Ada's thread is untouched.
    messages = await ada.request("GET", f"/threads/{thread}/messages")
    assert len(messages["items"]) == 2
    await ada.aclose()
    await bob.aclose()

    db = Database(sqlite_url(tmp_path / "data"))
    entries = await AuditLog(db).entries(limit=500)
    await db.dispose()
    assert {"register", "run_start", "access_denied"} <= {e.action for e in entries}
    bob_id = bob.user["id"]  # type: ignore[index]
    denied = {
        e.detail.get("resource")
        for e in entries
        if e.action == "access_denied" and e.user_id == bob_id
    }
    assert denied == {thread, run}
