"""The "Plan and usage" view in Chromium: a member sees their plan, budget and
organisation; an admin changes roles, removes a member (whose token is refused at
once) and restores them, and is told in words why SSO cannot be required yet."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from atoll.client import ApiError, AtollClient
from atoll.server.serve import running_server
from atoll.server.services import Services
from atoll.store.models import OrgMember, utcnow
from conftest import ask, log_in, sign_up, violations

from serving import PASSWORD, make_settings

pytestmark = pytest.mark.e2e
PLANS = {"free": {}, "pro": {"runs_at_once": 5, "monthly_tokens": 100_000}}


async def member(services: Services, url: str, email: str, org_id: str, role: str) -> str:
    async with AtollClient(url) as client:
        user_id: str = (await client.register(email, PASSWORD))["user"]["id"]
    row = OrgMember(user_id=user_id, org_id=org_id, role=role, joined_at=utcnow())
    await services.db.write(lambda session: session.add(row))
    return user_id


async def test_an_admin_manages_members_from_the_page(
    browser: Browser, tmp_path: Path, axe_source: str
) -> None:
    async with running_server(make_settings(tmp_path / "data", plans=PLANS)) as (url, server):
        services: Services = server.config.app.state.services
        acme = await services.org_admin.create("Acme", "pro")
        await services.orgs.add_domain(acme.id, "acme.test")
        await member(services, url, "ada@acme.test", acme.id, "admin")
        bob_id = await member(services, url, "bob@acme.test", acme.id, "member")
        await member(services, url, "cy@acme.test", acme.id, "member")
        # Bob, a plain member: his plan, his usage, the organisation's facts; no admin tools.
        bob_page = await browser.new_page()
        await log_in(bob_page, url, "bob@acme.test")
        await ask(bob_page, "hello")
        await expect(bob_page.locator(".run").last).to_contain_text("Hello")
        await bob_page.get_by_role("button", name="Plan").click()
        limits = bob_page.locator("#plan-limits")
        await expect(limits).to_contain_text("pro")
        await expect(limits).to_contain_text("of 100,000")
        await expect(bob_page.locator("#org-title")).to_have_text("Acme")
        await expect(bob_page.locator("#org-facts")).to_contain_text("acme.test")
        await expect(bob_page.locator("#org-admin")).to_be_hidden()
        assert await violations(bob_page, axe_source) == []
        bob_token = await bob_page.evaluate("() => localStorage.getItem('atoll.access')")
        # Ada, the admin.
        page = await browser.new_page()
        await log_in(page, url, "ada@acme.test")
        await page.get_by_role("button", name="Plan").click()
        rows = page.locator("#member-rows tr")
        await expect(rows).to_have_count(3)
        await expect(page.locator("#member-rows")).to_contain_text("bob@acme.test")
        assert await violations(page, axe_source) == []
        await page.get_by_label("Role of bob@acme.test").select_option("admin")
        async with AtollClient(url) as admin:
            await admin.login("ada@acme.test", PASSWORD)
            row = await admin.request("GET", f"/orgs/{acme.id}/members")
            roles = {m["email"]: m["role"] for m in row["items"]}
            assert roles["bob@acme.test"] == "admin"
        # Removing asks first, inside the page; then Bob's token stops working at once.
        await page.get_by_role("button", name="Remove bob@acme.test").click()
        await (
            page.get_by_role("group", name="Remove bob@acme.test?")
            .get_by_role("button", name="Keep")
            .click()
        )
        await expect(rows).to_have_count(3)
        await page.get_by_role("button", name="Remove bob@acme.test").click()
        await (
            page.get_by_role("group", name="Remove bob@acme.test?")
            .get_by_role("button", name="Remove")
            .click()
        )
        await expect(rows).to_have_count(2)
        await expect(page.locator("#removed-members")).to_contain_text("bob@acme.test")
        async with AtollClient(url) as bob:
            bob.access_token = bob_token
            with pytest.raises(ApiError) as refused:
                await bob.request("GET", "/me")
            assert refused.value.code == "session_revoked"
        await expect(bob_page.get_by_role("button", name="Log in")).to_be_visible()
        await page.get_by_role("button", name="Restore bob@acme.test").click()
        await expect(rows).to_have_count(3)
        await expect(page.locator("#removed-none")).to_be_visible()
        assert (await services.orgs.member(acme.id, bob_id)).role == "member"
        # Ada is the only admin left: stepping down is refused, in words, and undone.
        await page.get_by_label("Role of ada@acme.test").select_option("member")
        await expect(page.locator("#org-error")).to_contain_text("at least one admin")
        await expect(page.get_by_label("Role of ada@acme.test")).to_have_value("admin")
        # SSO required would lock her out: she has no identity provider linked.
        # click(), not check(): the box is meant to spring back once the server refuses,
        # and check() fails when it has already done so by the time it looks.
        await page.get_by_label("Require signing in with the identity provider").click()
        await expect(page.locator("#org-error")).to_contain_text("Link your identity provider")
        await expect(
            page.get_by_label("Require signing in with the identity provider")
        ).not_to_be_checked()
        await page.get_by_role("button", name="← Back to the chat").click()
        await expect(page.get_by_label("Message", exact=True)).to_be_visible()


async def test_a_spent_budget_is_said_in_words_and_the_message_kept(
    browser: Browser, tmp_path: Path
) -> None:
    plans = {"free": {"monthly_tokens": 0}}
    async with running_server(make_settings(tmp_path / "data", plans=plans)) as (url, _):
        page = await browser.new_page()
        await sign_up(page, url, "fay@example.com")
        await ask(page, "What is 17*23?")
        failed = page.locator(".msg.user.failed")
        await expect(failed).to_contain_text(
            "Not sent: Your monthly token budget of 0 on the free plan is spent; it renews on"
        )
        await expect(failed.get_by_role("button", name="Retry")).to_be_visible()
        await expect(page.get_by_label("Message", exact=True)).to_have_value("What is 17*23?")


async def test_api_keys_are_made_shown_once_and_revoked_from_the_page(
    browser: Browser, tmp_path: Path, axe_source: str
) -> None:
    async with running_server(make_settings(tmp_path / "data")) as (url, _):
        page = await browser.new_page()
        await sign_up(page, url, "kay@example.com")
        await page.get_by_role("button", name="Plan").click()
        await expect(page.locator("#key-none")).to_be_visible()
        await page.get_by_label("Key name").fill("ci bot")
        await page.get_by_label("Chat").uncheck()
        await page.get_by_role("button", name="Create key").click()
        shown = page.locator("#key-value")
        await expect(shown).to_contain_text("atk_key_")
        key = await shown.text_content()
        assert key
        await expect(page.locator("#key-list")).to_contain_text("ci bot")
        await expect(page.locator("#key-list")).to_contain_text("read")
        assert await violations(page, axe_source) == []
        async with AtollClient(url) as program:
            program.access_token = key
            assert (await program.request("GET", "/me"))["email"] == "kay@example.com"
            await page.get_by_role("button", name="Revoke ci bot").click()
            await expect(page.locator("#key-none")).to_be_visible()
            await expect(shown).to_be_hidden()
            with pytest.raises(ApiError) as refused:
                await program.request("GET", "/me")
            assert refused.value.code == "session_revoked"
