"""The chat page in a real browser: sign up, ask, watch the run, reload, isolation, cancel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from atoll.server.serve import running_server

from serving import PASSWORD, make_settings

pytestmark = pytest.mark.e2e


async def sign_up(page: Page, url: str, email: str) -> None:
    await page.goto(url)
    await page.get_by_role("button", name="No account? Sign up").click()
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await expect(page.locator("#connection")).to_have_text("online")


async def ask(page: Page, text: str) -> None:
    await page.get_by_label("Message").fill(text)
    await page.get_by_label("Message").press("Enter")


async def test_sign_up_ask_and_watch_the_run(browser: Browser, server: str) -> None:
    page = await browser.new_page()
    await sign_up(page, server, "page@example.com")
    await ask(page, "What is 17*23?")
    run = page.locator(".run").last
    await expect(run.locator(".state")).to_have_text("completed")
    card = run.locator(".tool[data-tool='calculator']")
    await expect(card.locator(".args")).to_contain_text("17*23")
    await expect(card.locator(".result")).to_contain_text("391")
    await expect(run.locator(".answer")).to_contain_text("391")
    await expect(run.locator(".thinking").first).to_be_visible()
    await expect(page.locator("#threads li")).to_have_count(1)
    # Reload: the thread, the question, the tool card and the answer are all still there.
    await page.reload()
    await expect(page.locator(".msg.user")).to_have_text(["What is 17*23?"])
    await expect(page.locator(".run .answer")).to_contain_text("391")
    await expect(page.locator(".tool[data-tool='calculator'] .result")).to_contain_text("391")


async def test_another_user_never_sees_the_first_users_threads(
    browser: Browser, server: str
) -> None:
    ada = await (await browser.new_context()).new_page()
    bob = await (await browser.new_context()).new_page()
    await sign_up(ada, server, "ada@example.com")
    await ask(ada, "What is 2*21?")
    await expect(ada.locator(".run .state")).to_have_text("completed")
    await sign_up(bob, server, "bob@example.com")
    await expect(bob.locator("#threads li")).to_have_count(0)
    await expect(bob.locator(".run")).to_have_count(0)
    await ask(bob, "What is 3*3?")
    await expect(bob.locator(".run .state")).to_have_text("completed")
    await expect(bob.locator(".run .answer")).not_to_contain_text("42")
    await expect(ada.locator(".run")).to_have_count(1)  # Bob's run never reached Ada's page


async def test_cancel_button(browser: Browser, settings_factory: Callable[..., Any]) -> None:
    async with running_server(settings_factory(offline_token_delay=0.3)) as (url, _):
        page = await browser.new_page()
        await sign_up(page, url, "cancel@example.com")
        await page.get_by_label("Agent").select_option("assistant")
        await ask(page, "hello")
        await expect(page.get_by_role("button", name="Cancel")).to_be_visible()
        await expect(page.locator(".run .answer")).not_to_have_text("")
        await page.get_by_role("button", name="Cancel").click()
        await expect(page.locator(".run .state")).to_have_text("cancelled (user)")
        await expect(page.get_by_role("button", name="Cancel")).to_be_hidden()


async def test_server_restart_mid_run_the_page_reconnects_and_shows_the_end(
    browser: Browser, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "data", offline_token_delay=0.5, shutdown_grace=0)
    async with running_server(settings) as (url, _):
        page = await browser.new_page()
        await sign_up(page, url, "restart@example.com")
        await page.get_by_label("Agent").select_option("assistant")
        await ask(page, "hello")
        await expect(page.locator(".run .answer")).not_to_have_text("")
        port = url.rsplit(":", 1)[1]
    await expect(page.locator("#connection")).to_have_text("reconnecting")
    async with running_server(settings, port=int(port)) as (again, _):
        assert again == url
        await expect(page.locator("#connection")).to_have_text("online", timeout=20_000)
        await expect(page.locator(".run .state")).to_have_text(
            "cancelled (shutdown)", timeout=20_000
        )


async def test_threads_rename_delete_and_keyboard(browser: Browser, server: str) -> None:
    page = await browser.new_page()
    await sign_up(page, server, "threads@example.com")
    box = page.get_by_label("Message")
    await box.fill("line one")
    await box.press("Shift+Enter")
    await box.type("line two")
    assert await box.input_value() == "line one\nline two"  # Shift+Enter: a new line, not sent
    await expect(page.locator(".msg.user")).to_have_count(0)
    await box.press("Enter")
    await expect(page.locator(".run .state")).to_have_text("completed")
    await expect(page.locator("#threads li")).to_have_count(1)

    page.once("dialog", lambda dialog: dialog.accept("My first thread"))
    await page.get_by_role("button", name="Rename").click()
    await expect(page.locator("#threads li")).to_have_text(["My first thread"])
    await expect(page.locator("#thread-title")).to_have_text("My first thread")

    await page.get_by_role("button", name="+ New thread").click()
    await ask(page, "What is 1+1?")
    await expect(page.locator(".run .state")).to_have_text("completed")
    await expect(page.locator("#threads li")).to_have_count(2)

    page.once("dialog", lambda dialog: dialog.accept())
    await page.get_by_role("button", name="Delete").click()
    await expect(page.locator("#threads li")).to_have_text(["My first thread"])
    await page.locator("#threads li button").click()
    await expect(page.locator(".msg.user")).to_have_text(["line one\nline two"])


async def test_phone_sized_screen(browser: Browser, server: str) -> None:
    page = await browser.new_page(viewport={"width": 390, "height": 844})
    await sign_up(page, server, "phone@example.com")
    await expect(page.get_by_label("Message")).to_be_visible()
    await expect(page.locator(".sidebar")).to_be_hidden()
    await ask(page, "What is 5*5?")
    await expect(page.locator(".run .answer")).to_contain_text("25")
    box = await page.locator(".run").bounding_box()
    assert box is not None
    assert box["x"] + box["width"] <= 390  # nothing wider than the screen
    await page.get_by_role("button", name="Threads").click()
    await expect(page.locator(".sidebar")).to_be_visible()
    await expect(page.locator("#threads li")).to_have_count(1)


async def test_errors_are_shown_as_readable_messages(browser: Browser, server: str) -> None:
    page = await browser.new_page()
    await page.goto(server)
    await page.get_by_label("Email").fill("nobody@example.com")
    await page.get_by_label("Password").fill("not-the-password")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#auth-error")).to_have_text("wrong email or password")
    await page.get_by_role("button", name="No account? Sign up").click()
    await page.get_by_label("Email").fill("short@example.com")
    await page.get_by_label("Password").fill("short")
    await page.get_by_role("button", name="Sign up").click()
    await expect(page.locator("#auth-error")).to_have_text(
        "invalid request: password (String should have at least 8 characters)"
    )
    assert "token" not in page.url  # nothing sensitive ever goes into the URL
