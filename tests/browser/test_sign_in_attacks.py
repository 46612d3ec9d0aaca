"""Attacks on the sign-in flow, against a real OpenID Provider: each one refused."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import Browser, expect
from test_sign_in import atoll_with_provider, sign_in_at_provider

from atoll.errors import SignInError
from oidc_provider import CLIENT_ID, CLIENT_SECRET, code_from_provider

pytestmark = [pytest.mark.e2e, pytest.mark.security]
EXPIRED = "That sign-in expired or was started in another browser. Try again."


async def test_a_forged_or_replayed_state_is_refused(browser: Browser, tmp_path: Path) -> None:
    async with atoll_with_provider(tmp_path) as (url, _):
        page = await browser.new_page()
        callbacks: list[str] = []
        page.on("request", lambda r: callbacks.append(r.url) if "/callback?" in r.url else None)
        await page.goto(url)
        await sign_in_at_provider(page, "ada")
        await expect(page.locator("#connection")).to_have_text("online")
        await page.get_by_role("button", name="Log out").click()
        await page.goto(callbacks[0])  # replayed: the state (and its nonce) are spent
        await expect(page.locator("#auth-error")).to_have_text(EXPIRED)
        forged = re.sub(r"state=[^&]+", "state=made-up", callbacks[0])
        await page.goto(forged)
        await expect(page.locator("#auth-error")).to_have_text(EXPIRED)


async def test_a_callback_from_another_browser_is_refused_and_spends_nothing(
    tmp_path: Path,
) -> None:
    """Login CSRF: an attacker's callback link opened by a victim (who lacks the cookie that
    bound the sign-in to the browser that started it) signs nobody in."""
    async with atoll_with_provider(tmp_path) as (url, services):
        redirect = f"{url}/api/v1/auth/oidc/acme/callback"
        start, browser_secret = await services.signin.start(
            "acme", redirect_uri=redirect, next_url="/"
        )
        callback = await code_from_provider(start, "ada")
        query = parse_qs(urlsplit(callback).query)
        code, state = query["code"][0], query["state"][0]
        for victim in (None, "the-victims-own-cookie"):
            with pytest.raises(SignInError) as refused:
                await services.signin.callback(
                    "acme", code=code, state=state, browser=victim, redirect_uri=redirect
                )
            assert refused.value.reason == "state_invalid"
        target, one_time = await services.signin.callback(  # the browser that started it
            "acme", code=code, state=state, browser=browser_secret, redirect_uri=redirect
        )
        assert target == "/" and one_time


async def test_an_intercepted_code_is_useless_without_the_pkce_verifier(tmp_path: Path) -> None:
    async with atoll_with_provider(tmp_path) as (url, services):
        redirect = f"{url}/api/v1/auth/oidc/acme/callback"
        start, _ = await services.signin.start("acme", redirect_uri=redirect, next_url="/")
        assert "code_challenge_method=S256" in start and "code_challenge=" in start
        code = parse_qs(urlsplit(await code_from_provider(start, "ada")).query)["code"][0]
        issuer = services.signin.provider("acme").settings.issuer
        async with httpx.AsyncClient() as http:
            metadata = (await http.get(f"{issuer}/.well-known/openid-configuration")).json()
            stolen = await http.post(
                metadata["token_endpoint"],
                data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect},
                auth=(CLIENT_ID, CLIENT_SECRET),
            )
        assert stolen.status_code == 400
        assert stolen.json()["error"] == "invalid_grant"


async def test_the_one_time_code_works_once_and_only_in_its_browser(
    browser: Browser, tmp_path: Path
) -> None:
    async with atoll_with_provider(tmp_path) as (url, _):
        page = await browser.new_page()
        codes: list[str] = []

        def seen(url: str) -> None:
            if "#signin=" in url:
                codes.append(url.split("#signin=")[1])

        page.on("framenavigated", lambda frame: seen(frame.url))
        await page.goto(url)
        await sign_in_at_provider(page, "ada")
        await expect(page.locator("#connection")).to_have_text("online")
        assert len(codes) == 1
        exchange = """async (code) => (await fetch('/api/v1/auth/oidc/exchange', {method: 'POST',
            headers: {'content-type': 'application/json'}, body: JSON.stringify({code})})).json()"""
        again = await page.evaluate(exchange, codes[0])
        assert (again["status"], again["code"], again["reason"]) == (
            401,
            "sign_in_failed",
            "code_invalid",
        )
        other = await (await browser.new_context()).new_page()
        await other.goto(url)
        elsewhere = await other.evaluate(exchange, codes[0])
        assert elsewhere["reason"] == "code_invalid"


@pytest.mark.parametrize(
    "target", ["https://evil.example/steal", "//evil.example/steal", "/\\evil.example"]
)
async def test_a_sign_in_never_redirects_to_another_site(
    browser: Browser, tmp_path: Path, target: str
) -> None:
    async with atoll_with_provider(tmp_path) as (url, _):
        page = await browser.new_page()
        await page.goto(f"{url}/api/v1/auth/oidc/acme/start?next={target}")
        await page.locator("input[name=login]").fill("ada")
        await page.locator("input[name=password]").fill("any")
        await page.get_by_role("button", name="Sign-in").click()
        await page.get_by_role("button", name="Continue").click()
        await expect(page.locator("#connection")).to_have_text("online")
        assert page.url == f"{url}/"
