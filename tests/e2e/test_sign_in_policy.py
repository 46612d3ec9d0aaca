"""An organisation's sign-in policy, against real OpenID Providers (two node-oidc-provider
instances on loopback) and a real server, with a plain HTTP client (no browser: all of
it is server-side): bound providers, sessions ended when the policy changes, refused
sign-ins audited with who was tried, and plain http:// issuers refused at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from atoll.server.serve import running_server
from atoll.server.services import Services
from oidc_provider import CLIENT_ID, CLIENT_SECRET, code_from_provider, free_port, oidc_provider

from serving import make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.security]
ACCOUNTS = {
    "ada": {"email": "ada@acme.test", "email_verified": True, "name": "Ada"},
    "mallory": {"email": "mallory@acme.test", "email_verified": False},
}


def provider_config(name: str, issuer: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "display_name": name.title(), "issuer": issuer,
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **extra}  # fmt: skip


@asynccontextmanager
async def atoll_with_two_providers(tmp_path: Path) -> AsyncIterator[tuple[str, Services]]:
    """Atoll with the company's provider ``acme`` (which owns its people's addresses: it may
    link) and another one, ``other``, that vouches for the same people (as a second tenant
    or a social login would)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        oidc_provider(
            redirect_uris=[f"{url}/api/v1/auth/oidc/acme/callback"], accounts=ACCOUNTS
        ) as acme,
        oidc_provider(
            redirect_uris=[f"{url}/api/v1/auth/oidc/other/callback"], accounts=ACCOUNTS
        ) as other,
    ):
        providers = [
            provider_config("acme", acme.issuer, allow_linking=True),
            provider_config("other", other.issuer),
        ]
        settings = make_settings(tmp_path / "data", oidc_providers=providers)
        async with running_server(settings, port=port) as (served, server):
            assert served == url
            yield url, server.config.app.state.services


async def sign_in(url: str, provider: str, login: str) -> dict[str, Any]:
    """Sign in through ``provider`` as its user ``login``, as the page does (a fresh client,
    so a fresh browser cookie): the token answer, or ``{"error": reason}``."""
    async with httpx.AsyncClient(base_url=url) as http:
        start = await http.get(f"/api/v1/auth/oidc/{provider}/start")
        assert start.status_code == 303, start.text
        callback = await code_from_provider(start.headers["location"], login)
        back = await http.get(callback)
        assert back.status_code == 303
        fragment = back.headers["location"].split("#", 1)[1]
        key, _, value = fragment.partition("=")
        if key == "signin_error":
            return {"error": unquote(value)}
        exchanged = await http.post("/api/v1/auth/oidc/exchange", json={"code": unquote(value)})
        assert exchanged.status_code == 200, exchanged.text
        return dict(exchanged.json())


async def status_of(url: str, access_token: str) -> tuple[int, str | None]:
    async with httpx.AsyncClient(base_url=url) as http:
        answer = await http.get("/api/v1/me", headers={"Authorization": f"Bearer {access_token}"})
    return answer.status_code, answer.json().get("code")


async def refresh_status(url: str, refresh_token: str) -> tuple[int, str | None]:
    async with httpx.AsyncClient(base_url=url) as http:
        answer = await http.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})
    return answer.status_code, answer.json().get("code")


async def test_an_organisation_bound_to_its_provider_refuses_the_others(tmp_path: Path) -> None:
    """F7: with SSO required and the organisation bound to ``acme``, a person its provider
    disabled cannot come in through ``other``, and sessions from ``other`` end."""
    async with atoll_with_two_providers(tmp_path) as (url, services):
        org = await services.org_admin.create("Acme")
        await services.org_admin.add_domain(org.id, "acme.test", by=None)
        through_other = await sign_in(url, "other", "ada")  # allowed while unbound
        assert "access_token" in through_other
        await services.org_admin.require_sso(org.id, True, by=None)
        assert await status_of(url, through_other["access_token"]) == (200, None)
        ended = await services.org_admin.set_providers(org.id, ["acme"], by=None)
        assert len(ended) == 1
        assert await status_of(url, through_other["access_token"]) == (401, "session_revoked")
        assert await refresh_status(url, through_other["refresh_token"]) == (
            401, "session_revoked",
        )  # fmt: skip
        assert await sign_in(url, "other", "ada") == {"error": "provider_not_allowed"}
        through_acme = await sign_in(url, "acme", "ada")
        assert through_acme["user"]["id"] == through_other["user"]["id"]  # the same account
        assert await status_of(url, through_acme["access_token"]) == (200, None)
        refused = [e for e in await services.audit.entries() if e.action == "sign_in_failed"]
        assert refused[0].detail["reason"] == "provider_not_allowed"
        assert (refused[0].detail["subject"], refused[0].detail["email"]) == (
            "ada", "ada@acme.test",
        )  # fmt: skip
        assert refused[0].detail["provider"] == "other"
        with pytest.raises(Exception, match="unknown provider 'nope'"):
            await services.org_admin.set_providers(org.id, ["nope"], by=None)


async def test_a_refused_sign_in_is_audited_with_who_was_tried(tmp_path: Path) -> None:
    async with atoll_with_two_providers(tmp_path) as (url, services):
        assert await sign_in(url, "acme", "mallory") == {"error": "email_unverified"}
        [entry] = [e for e in await services.audit.entries() if e.action == "sign_in_failed"]
        assert entry.detail["reason"] == "email_unverified"
        assert entry.detail["subject"] == "mallory"
        assert entry.detail["email"] == "mallory@acme.test"
        assert entry.detail["issuer"] == services.signin.provider("acme").settings.issuer
        assert entry.detail["address"] == "127.0.0.1"


def test_a_plain_http_issuer_off_loopback_stops_the_server_at_start(tmp_path: Path) -> None:
    providers = [provider_config("corp", "http://id.corp.example")]
    env = {**os.environ, "ATOLL_OIDC_PROVIDERS": json.dumps(providers)}
    started = subprocess.run(
        [sys.executable, "-m", "atoll.cli", "serve", "--port", str(free_port()),
         "--data-dir", str(tmp_path / "data")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert started.returncode == 2
    assert "'corp'" in started.stderr and "http://id.corp.example" in started.stderr
    assert "Traceback" not in started.stderr
    # Named as insecure on purpose, it starts (a test network): the setting is explicit.
    insecure = [{**providers[0], "allow_insecure_http": True}]
    settings = make_settings(tmp_path / "other", oidc_providers=insecure)
    assert settings.oidc_providers[0].plain_http_allowed()
