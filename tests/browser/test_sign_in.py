"""Signing in with a real OpenID Provider (node-oidc-provider on loopback), in Chromium:
the full redirect flow, a just-in-time account, joining the organisation of the email's
domain, SSO required for that domain, signing out and in again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from atoll.client import ApiError, AtollClient
from atoll.server.serve import running_server
from oidc_provider import CLIENT_ID, CLIENT_SECRET, free_port, oidc_provider

from serving import PASSWORD, make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.security]
ACCOUNTS = {
    "ada": {"email": "ada@acme.test", "email_verified": True, "name": "Ada Lovelace"},
    "mallory": {"email": "mallory@acme.test", "email_verified": False},
}


@asynccontextmanager
async def atoll_with_provider(tmp_path: Path, **provider: Any) -> AsyncIterator[tuple[str, Any]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    callback = f"{url}/api/v1/auth/oidc/acme/callback"
    with oidc_provider(redirect_uris=[callback], accounts=ACCOUNTS) as idp:
        config = {"name": "acme", "display_name": "Acme ID", "issuer": idp.issuer,
                  "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **provider}  # fmt: skip
        settings = make_settings(tmp_path / "data", oidc_providers=[config])
        async with running_server(settings, port=port) as (served, server):
            assert served == url
            yield url, server.config.app.state.services


async def sign_in_at_provider(page: Page, login: str) -> None:
    """On node-oidc-provider's own (development) pages: log in and consent."""
    await page.get_by_role("link", name="Sign in with Acme ID").click()
    await page.locator("input[name=login]").fill(login)
    await page.locator("input[name=password]").fill("any password at the test provider")
    await page.get_by_role("button", name="Sign-in").click()
    await page.get_by_role("button", name="Continue").click()


async def test_sign_in_jit_org_join_sso_and_sign_out(browser: Browser, tmp_path: Path) -> None:
    async with atoll_with_provider(tmp_path) as (url, services):
        org = await services.orgs.create("Acme")
        await services.orgs.add_domain(org.id, "ACME.test")
        page = await browser.new_page()
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        await page.goto(url)
        await sign_in_at_provider(page, "ada")
        await expect(page.locator("#connection")).to_have_text("online")
        await expect(page.locator("#me")).to_have_text("ada@acme.test")
        assert page.url == f"{url}/"  # the one-time code was removed from the address
        assert not any("access_token" in r or "eyJ" in r for r in requests)  # no token in a URL
        token = await page.evaluate("() => localStorage.getItem('atoll.access')")
        async with AtollClient(url) as client:
            client.access_token = token
            me = await client.request("GET", "/me")
            assert (me["email"], me["name"]) == ("ada@acme.test", "Ada Lovelace")
            identities = await client.request("GET", "/me/identities")
            assert [(i["provider"], i["email"]) for i in identities] == [("acme", "ada@acme.test")]
            with pytest.raises(ApiError) as last:  # the account has no password: keep one way in
                await client.request("DELETE", f"/me/identities/{identities[0]['id']}")
            assert (last.value.status, last.value.code) == (409, "last_sign_in")
        member = await services.orgs.membership(me["id"])
        assert member is not None and member.org_id == org.id
        # The organisation requires SSO: passwords are refused for its domain.
        await services.org_admin.require_sso(org.id, True, by=None)
        async with AtollClient(url) as stranger:
            with pytest.raises(ApiError) as refused:
                await stranger.register("bob@acme.test", PASSWORD)
            assert (refused.value.status, refused.value.code) == (403, "sso_required")
            with pytest.raises(ApiError) as no_password:  # Ada's account has none to guess
                await stranger.login("ada@acme.test", "any password at the test provider")
            assert no_password.value.code == "invalid_credentials"
        await page.get_by_role("button", name="Log out").click()
        await expect(page.get_by_role("button", name="Log in")).to_be_visible()
        # Ada is still signed in at her provider: one click, and the same account.
        await page.get_by_role("link", name="Sign in with Acme ID").click()
        await expect(page.locator("#me")).to_have_text("ada@acme.test")
        async with AtollClient(url) as client:
            client.access_token = await page.evaluate("() => localStorage.getItem('atoll.access')")
            assert (await client.request("GET", "/me"))["id"] == me["id"]
            # Removed from the organisation (what `atoll org remove` does): her sessions end.
            assert await services.org_admin.remove(org.id, me["id"], by=None) >= 1
            with pytest.raises(ApiError) as removed:
                await client.request("GET", "/me")
            assert (removed.value.status, removed.value.code) == (401, "session_revoked")
            assert await services.orgs.membership(me["id"]) is None
        # ... and kept out: her provider still signs her in, Atoll refuses, in words.
        await page.reload()
        await page.get_by_role("link", name="Sign in with Acme ID").click()
        await expect(page.locator("#auth-error")).to_contain_text("Your organisation removed you")
        await services.org_admin.restore(org.id, me["id"], by=None)
        await page.get_by_role("link", name="Sign in with Acme ID").click()
        await expect(page.locator("#me")).to_have_text("ada@acme.test")


async def test_an_unverified_email_makes_no_account(browser: Browser, tmp_path: Path) -> None:
    async with atoll_with_provider(tmp_path) as (url, _):
        page = await browser.new_page()
        await page.goto(url)
        await sign_in_at_provider(page, "mallory")
        await expect(page.locator("#auth-error")).to_contain_text(
            "did not confirm your email address"
        )
        assert "signin" not in page.url


async def test_a_password_account_is_linked_only_when_the_provider_may(
    browser: Browser, tmp_path: Path
) -> None:
    for linking in (False, True):
        async with atoll_with_provider(tmp_path / str(linking), allow_linking=linking) as (url, _):
            async with AtollClient(url) as client:
                await client.register("ada@acme.test", PASSWORD)
            page = await browser.new_page()
            await page.goto(url)
            await sign_in_at_provider(page, "ada")
            if linking:
                await expect(page.locator("#me")).to_have_text("ada@acme.test")
            else:
                await expect(page.locator("#auth-error")).to_contain_text(
                    "An account with your email already exists"
                )
            await page.close()


async def test_a_provider_that_is_down_is_said_in_words(browser: Browser, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = {"name": "acme", "display_name": "Acme ID", "issuer": dead,
              "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}  # fmt: skip
    async with running_server(make_settings(tmp_path / "data", oidc_providers=[config])) as (
        url,
        _,
    ):
        page = await browser.new_page()
        await page.goto(url)
        await page.get_by_role("link", name="Sign in with Acme ID").click()
        await expect(page.locator("#auth-error")).to_have_text(
            "The identity provider cannot be reached right now. Try again later."
        )
        assert page.url == f"{url}/"
