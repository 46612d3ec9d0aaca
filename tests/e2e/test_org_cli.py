"""`atoll org` for operators: create, domains, plan, SSO required, members, removal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serving import PASSWORD, serve_process

pytestmark = [pytest.mark.e2e]


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
