"""`atoll org` for operators: create, domains, plan, SSO required, members, removal."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import httpx
import pytest
import websockets

from atoll.client import ApiError, AtollClient, AtollSocket
from atoll.store.db import Database, sqlite_url
from atoll.store.models import OrgMember, utcnow
from integration.fake_openai import API_KEY, serve_fake_openai

from serving import PASSWORD, ServeProcess, serve_process

pytestmark = [pytest.mark.e2e]


async def joined(data: Path, user_id: str, org_id: str) -> None:
    """Make the user a member, as a sign-in with the organisation's domain does."""
    db = Database(sqlite_url(data))
    db.start()
    member = OrgMember(user_id=user_id, org_id=org_id, role="member", joined_at=utcnow())
    try:
        await db.write(lambda session: session.add(member))
    finally:
        await db.dispose()


async def first_and_last(
    client: AtollClient, run_id: str, live: asyncio.Event
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first and the last message of the run's SSE stream (``live`` once one came)."""
    first: dict[str, Any] | None = None
    async for message in client.stream(run_id):
        if first is None:
            first = message
            live.set()
        last = message
    assert first is not None
    return first, last


async def until_closed(socket: AtollSocket) -> None:
    """Read the socket until the server closes it."""
    while True:
        await socket.receive()


def org(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atoll.cli", "org", *args, "--data-dir", str(data)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_an_operator_sets_up_an_organisation_that_requires_sso(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = org(data, "create", "Acme", "--plan", "pro")
    assert created.returncode == 0, created.stderr
    org_id = created.stdout.strip()
    assert org_id.startswith("org_")
    added = org(data, "add-domain", org_id, "ACME.test.")
    assert (added.returncode, added.stdout.strip()) == (0, "acme.test")
    other = org(data, "create", "Other").stdout.strip()
    taken = org(data, "add-domain", other, "acme.test")
    assert taken.returncode == 1 and "belongs to another organisation" in taken.stderr
    bad = org(data, "add-domain", org_id, "not a domain")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    plan = org(data, "set-plan", org_id, "enterprise")
    assert plan.stdout.strip() == "pro -> enterprise"
    assert org(data, "require-sso", org_id, "on").returncode == 0
    assert org(data, "members", org_id).stdout == ""
    missing = org(data, "remove", org_id, "nobody@acme.test")
    assert missing.returncode == 1 and "no such member" in missing.stderr
    unknown = org(data, "members", "org_nope")
    assert unknown.returncode == 1 and "organisation not found" in unknown.stderr
    with serve_process(data) as server:
        refused = httpx.post(
            f"{server.url}/api/v1/auth/register",
            json={"email": "bob@acme.test", "password": PASSWORD},
        )
        assert (refused.status_code, refused.json()["code"]) == (403, "sso_required")
        elsewhere = httpx.post(
            f"{server.url}/api/v1/auth/register",
            json={"email": "bob@evil-acme.test", "password": PASSWORD},
        )
        assert elsewhere.status_code == 201  # a look-alike domain is not the organisation's


def test_requiring_sso_from_the_command_line_ends_password_sessions(tmp_path: Path) -> None:
    """F7: the operator's `require-sso on` ends the password sessions of the organisation's
    people in the database: the running server refuses their refresh at once."""
    data = tmp_path / "data"
    org_id = org(data, "create", "Acme").stdout.strip()
    assert org(data, "add-domain", org_id, "acme.test").returncode == 0
    with serve_process(data) as server:
        tokens = {}
        for email in ("ada@acme.test", "eve@elsewhere.test"):
            answer = httpx.post(
                f"{server.url}/api/v1/auth/register", json={"email": email, "password": PASSWORD}
            )
            assert answer.status_code == 201
            tokens[email] = answer.json()["refresh_token"]
        required = org(data, "require-sso", org_id, "on")
        assert required.returncode == 0, required.stderr
        ada = httpx.post(
            f"{server.url}/api/v1/auth/refresh",
            json={"refresh_token": tokens["ada@acme.test"]},
        )
        assert (ada.status_code, ada.json()["code"]) == (401, "session_revoked")
        eve = httpx.post(
            f"{server.url}/api/v1/auth/refresh",
            json={"refresh_token": tokens["eve@elsewhere.test"]},
        )
        assert eve.status_code == 200  # not the organisation's
        assert required.stdout.strip() == "sso required: on; 1 session(s) ended"
    unknown = org(data, "set-providers", org_id, "acme")
    assert unknown.returncode == 1 and "unknown provider 'acme'" in unknown.stderr
    unbound = org(data, "set-providers", org_id)
    assert unbound.stdout.strip() == "providers: any configured provider; 0 session(s) ended"


async def test_an_operator_command_beside_a_live_server_leaves_its_runs_alone(
    tmp_path: Path,
) -> None:
    """`atoll org` and `atoll user` touch accounts and organisations only: a command run
    beside a live single-process server must not take the server's runs for a crashed
    process's (before, every such command marked the server's runs in progress dead)."""
    from atoll.client import AtollClient

    data = tmp_path / "data"
    with serve_process(data, ATOLL_OFFLINE_TOKEN_DELAY="0.2") as server:
        async with AtollClient(server.url) as ada:
            await ada.register("ada@example.com", PASSWORD)
            accepted = await ada.chat("How do plugins work?", agent="assistant")  # ~10 s
            run_id = accepted["run"]["id"]
            stream = ada.stream(run_id)
            first = await anext(stream)  # the run is going
            assert first["type"] == "agent_started"
            assert org(data, "create", "Beside").returncode == 0
            rest = [event async for event in stream]
        assert rest[-1]["type"] == "agent_completed", rest[-1]


async def test_removal_from_the_command_line_ends_the_members_socket_and_stream(
    tmp_path: Path,
) -> None:
    """Issue 24: `atoll org remove` is another process, with no Redis to tell the single
    `atoll serve`; the server's check of the sessions its sockets and streams were opened
    with finds the member's ended in the database: her socket closes (4401
    `removed_from_org`) and her stream ends while her run is still at the model, and her
    token is refused at once — though the session cache would have kept it for 10 minutes."""
    data = tmp_path / "data"
    org_id = (await asyncio.to_thread(org, data, "create", "Acme")).stdout.strip()
    async with serve_fake_openai() as fake:
        model = {"ATOLL_LLM_PROVIDER": "openai", "ATOLL_LLM_BASE_URL": fake.base_url,
                 "ATOLL_LLM_API_KEY": API_KEY, "ATOLL_LLM_MODEL": "fake-model",
                 "ATOLL_SESSION_CACHE_SECONDS": "600"}  # fmt: skip
        server = ServeProcess(data, **model)
        await asyncio.to_thread(server.start)
        try:
            async with AtollClient(server.url) as ada:
                await ada.register("ada@acme.test", PASSWORD)
                await joined(data, (await ada.request("GET", "/me"))["id"], org_id)
                async with ada.connect() as socket:
                    run_id = (await socket.send_message("gate", agent="assistant"))["run_id"]
                    live = asyncio.Event()
                    stream = asyncio.create_task(first_and_last(ada, run_id, live))
                    await asyncio.wait_for(live.wait(), 10)
                    removed = await asyncio.to_thread(org, data, "remove", org_id, "ada@acme.test")
                    assert removed.returncode == 0, removed.stderr
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await asyncio.wait_for(until_closed(socket), 10)
                    assert closed.value.rcvd is not None
                    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                        4401, "removed_from_org",
                    )  # fmt: skip
                    first, last = await asyncio.wait_for(stream, 10)
                assert first["type"] == "agent_started"
                assert last == {"type": "error", "code": "session_revoked", "detail": ANY}
                assert not fake.gate.is_set()  # the run did not end: the session did
                with pytest.raises(ApiError) as refused:
                    await ada.request("GET", "/me")
                assert (refused.value.status, refused.value.code) == (401, "session_revoked")
        finally:
            fake.gate.set()
            await asyncio.to_thread(server.kill)
