"""Personal API keys (issue 16): made once and shown once, authenticated by the one
validation, scoped, refused at once when revoked or expired, never another user's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import websockets
from sqlalchemy import update

from atoll.client import ApiError, AtollClient
from atoll.server.serve import running_server
from atoll.store.models import ApiKey, utcnow

from serving import PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.security]


async def refused(call: Any) -> tuple[int, str]:
    with pytest.raises(ApiError) as caught:
        await call
    return caught.value.status, caught.value.code


def as_key(server: str, key: str) -> AtollClient:
    client = AtollClient(server)
    client.access_token = key
    return client


async def test_a_key_is_shown_once_and_works_like_a_session_within_its_scopes(
    server: str, new_client: Any
) -> None:
    ada = await new_client()
    made = await ada.request("POST", "/keys", json={"name": "ci bot"})
    key = made["key"]
    assert key.startswith(made["prefix"] + ".") and made["scopes"] == ["chat", "read"]
    listed = await ada.request("GET", "/keys")
    assert [(k["id"], k["prefix"]) for k in listed] == [(made["id"], made["prefix"])]
    assert all("key" not in k for k in listed)  # never shown again
    async with as_key(server, key) as bot:
        me = await bot.request("GET", "/me")
        assert me["email"] == (await ada.request("GET", "/me"))["email"]
        accepted = await bot.chat("What is 2+2?", agent="assistant")
        events = [e async for e in bot.stream(accepted["run"]["id"])]
        assert events[-1]["type"] == "agent_completed"
        threads = await ada.request("GET", "/threads")  # the run is the owner's
        assert accepted["thread_id"] in [t["id"] for t in threads["items"]]
        async with bot.connect() as socket:  # the socket takes a key with `chat`
            ack = await socket.send_message("hello", agent="assistant")
            assert ack["type"] == "ack"
        # A key cannot make keys, manage organisations or identities, or log out.
        for method, path in (("POST", "/keys"), ("GET", "/keys"), ("GET", "/me/identities"),
                             ("POST", "/auth/logout"), ("GET", "/orgs/org_x")):  # fmt: skip
            kwargs = {"json": {"name": "more"}} if method == "POST" else {}
            assert await refused(bot.request(method, path, **kwargs)) == (
                403, "insufficient_scope",
            )  # fmt: skip


async def test_a_read_key_reads_and_cannot_chat(server: str, new_client: Any) -> None:
    ada = await new_client()
    made = await ada.request("POST", "/keys", json={"name": "dashboard", "scopes": ["read"]})
    async with as_key(server, made["key"]) as reader:
        assert (await reader.request("GET", "/threads"))["items"] == []
        assert await refused(reader.chat("hello")) == (403, "insufficient_scope")
        with pytest.raises(websockets.ConnectionClosed) as closed:  # the socket is for chat
            async with reader.connect():
                pass
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "insufficient_scope")
    assert (await ada.request("GET", "/threads"))["items"] == []  # nothing was stored


async def test_revoked_expired_forged_and_other_users_keys_are_refused(
    settings_factory: Callable[..., Any],
) -> None:
    async with running_server(settings_factory()) as (server, uvicorn_server):
        services = uvicorn_server.config.app.state.services
        async with AtollClient(server) as ada, AtollClient(server) as eve:
            await ada.register("ada@example.com", PASSWORD)
            await eve.register("eve@example.com", PASSWORD)
            await keys_are_refused(server, services, ada, eve)


async def keys_are_refused(server: str, services: Any, ada: AtollClient, eve: AtollClient) -> None:
    made = await ada.request("POST", "/keys", json={"name": "laptop"})
    eve_key = (await eve.request("POST", "/keys", json={"name": "e"}))["key"]
    async with as_key(server, made["key"]) as bot, as_key(server, eve_key) as eve_bot:
        thread = (await bot.chat("remember this", agent="assistant"))["thread_id"]
        assert await refused(eve_bot.request("GET", f"/threads/{thread}")) == (404, "not_found")
        assert await refused(eve.request("DELETE", f"/keys/{made['id']}")) == (404, "not_found")
        forged = made["key"][:-4] + ("AAAA" if not made["key"].endswith("AAAA") else "BBBB")
        async with as_key(server, forged) as forger:
            assert await refused(forger.request("GET", "/me")) == (401, "invalid_token")
        async with bot.connect() as socket:
            await ada.request("DELETE", f"/keys/{made['id']}")
            with pytest.raises(websockets.ConnectionClosed) as gone:
                await asyncio.wait_for(socket.receive(), 5)
            assert gone.value.rcvd is not None and gone.value.rcvd.code == 4401
        assert await refused(bot.request("GET", "/me")) == (401, "session_revoked")
    assert await ada.request("GET", "/keys") == []
    # Expired: refused from its expiry on.
    later = await ada.request("POST", "/keys", json={"name": "week", "expires_in_days": 7})
    statement = (
        update(ApiKey)
        .where(ApiKey.id == later["id"])
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    await services.db.write(lambda session: session.execute(statement))
    async with as_key(server, later["key"]) as stale:
        assert await refused(stale.request("GET", "/me")) == (401, "session_revoked")
    actions = [e.action for e in await services.audit.entries()]
    assert {"key_created", "key_revoked"} <= set(actions)


async def test_at_most_twenty_live_keys(new_client: Any) -> None:
    ada = await new_client()
    made = [await ada.request("POST", "/keys", json={"name": f"k{i}"}) for i in range(20)]
    assert await refused(ada.request("POST", "/keys", json={"name": "one more"})) == (
        409, "too_many_keys",
    )  # fmt: skip
    await ada.request("DELETE", f"/keys/{made[0]['id']}")
    await ada.request("POST", "/keys", json={"name": "now it fits"})


async def test_a_socket_opened_with_a_key_closes_when_the_key_expires(
    settings_factory: Callable[..., Any],
) -> None:
    """Expiry is an ending nobody announces: the server's check of the keys its sockets
    were opened with finds it (docs/auth.md, "When a session ends")."""
    async with running_server(settings_factory()) as (server, uvicorn_server):
        services = uvicorn_server.config.app.state.services
        async with AtollClient(server) as ada:
            await ada.register("ada@example.com", PASSWORD)
            made = await ada.request("POST", "/keys", json={"name": "week", "expires_in_days": 7})
            async with as_key(server, made["key"]) as bot, bot.connect() as socket:
                await socket.ping()
                statement = (
                    update(ApiKey)
                    .where(ApiKey.id == made["id"])
                    .values(expires_at=utcnow() - timedelta(seconds=1))
                )
                await services.db.write(lambda session: session.execute(statement))
                with pytest.raises(websockets.ConnectionClosed) as gone:
                    await asyncio.wait_for(until_closed(socket), 10)
                assert gone.value.rcvd is not None
                assert (gone.value.rcvd.code, gone.value.rcvd.reason) == (4401, "session_revoked")


async def until_closed(socket: Any) -> None:
    """Read the socket until the server closes it."""
    while True:
        await socket.receive()
