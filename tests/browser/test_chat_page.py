"""The chat page in a real browser: sign up, ask, watch the run, reload, isolation, cancel."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from atoll.server.serve import running_server
from conftest import ask, sign_up, watch_errors

from serving import make_settings

pytestmark = pytest.mark.e2e


async def test_sign_up_ask_and_watch_the_run(browser: Browser, server: str) -> None:
    page = await browser.new_page()
    errors = watch_errors(page)
    await sign_up(page, server, "page@example.com")
    await expect(page.locator(".welcome")).to_contain_text("What can I help with?")
    await ask(page, "What is 17*23?")
    run = page.locator(".run").last
    await expect(run).to_have_class(re.compile("ended-completed"))
    await expect(run.locator(".answer")).to_contain_text("17*23 = 391")
    # The answer comes first; the steps are one line that opens to readable cards.
    summary = run.locator(".steps > summary")
    await expect(summary).to_have_text(
        re.compile(r"^Used calculator, asked assistant · \d+\.\d s$")
    )
    card = run.locator(".step-card.tool")
    await expect(card).to_be_hidden()
    await summary.click()
    await expect(card.locator(".step-body")).to_have_text("expression: 17*23")
    await expect(card.locator(".step-result")).to_contain_text("value: 391")
    await expect(run.locator(".step-card.thinking").first).to_be_visible()
    await expect(page.locator("#threads li")).to_have_count(1)
    await expect(page).to_have_url(re.compile(r"/t/thr_[\w-]+$"))
    # Reload: the same thread, question, steps and answer.
    thread_url = page.url
    await page.reload()
    assert page.url == thread_url
    await expect(page.locator(".msg.user .text")).to_have_text(["What is 17*23?"])
    await expect(page.locator(".run .answer")).to_contain_text("391")
    await page.locator(".run .steps > summary").click()
    await expect(page.locator(".step-card.tool .step-result")).to_contain_text("391")
    assert errors == []


async def test_another_user_never_sees_the_first_users_threads(
    browser: Browser, server: str
) -> None:
    ada = await (await browser.new_context()).new_page()
    bob = await (await browser.new_context()).new_page()
    await sign_up(ada, server, "ada@example.com")
    await ask(ada, "What is 2*21?")
    await expect(ada.locator(".run")).to_have_class(re.compile("ended-completed"))
    thread_url = ada.url
    await sign_up(bob, server, "bob@example.com")
    await expect(bob.locator("#threads li")).to_have_count(0)
    await expect(bob.locator(".run")).to_have_count(0)
    await ask(bob, "What is 3*3?")
    await expect(bob.locator(".run")).to_have_class(re.compile("ended-completed"))
    await expect(bob.locator(".run .answer")).not_to_contain_text("42")
    await expect(ada.locator(".run")).to_have_count(1)  # Bob's run never reached Ada's page
    await bob.goto(thread_url)  # Ada's thread by its URL: as if it did not exist
    await expect(bob.locator("#notice")).to_have_text("That thread does not exist or was deleted.")
    await expect(bob.locator(".msg.user")).to_have_count(0)


async def test_stop_button(browser: Browser, settings_factory: Callable[..., Any]) -> None:
    async with running_server(settings_factory(offline_token_delay=0.3)) as (url, _):
        page = await browser.new_page()
        await sign_up(page, url, "cancel@example.com")
        await page.get_by_label("Agent").select_option("assistant")
        await ask(page, "hello")
        stop = page.get_by_role("button", name="Stop", exact=True)
        await expect(stop).to_be_visible()
        await expect(page.locator(".run .answer")).not_to_have_text("")
        await stop.click()
        await expect(page.locator(".run .state")).to_have_text("Stopped.")
        await expect(stop).to_be_hidden()


async def test_server_restart_mid_run_the_page_reconnects_and_shows_the_end(
    browser: Browser, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "data", offline_token_delay=0.5, shutdown_grace=0)
    async with running_server(settings) as (url, _):
        page = await browser.new_page()
        await page.clock.install()  # the page's timers, to hold its reconnect backoff below
        await sign_up(page, url, "restart@example.com")
        await page.get_by_label("Agent").select_option("assistant")
        await ask(page, "hello")
        await expect(page.locator(".run .answer")).not_to_have_text("")
        port = url.rsplit(":", 1)[1]
    await expect(page.locator("#connection")).to_contain_text("retrying in")
    await expect(page.get_by_role("button", name="Retry now")).to_be_visible()
    # The page's time stops: its backoff timer cannot fire, only the button can reconnect.
    await page.clock.pause_at(await page.evaluate("Date.now()") + 1)
    async with running_server(settings, port=int(port)) as (again, _):
        assert again == url
        await page.get_by_role("button", name="Retry now").click()  # no waiting for the backoff
        await expect(page.locator("#connection")).to_have_text("online")
        await page.clock.resume()
        await expect(page.locator(".run .state")).to_have_text(
            "Stopped: the server restarted. Send your message again."
        )


async def test_threads_rename_delete_and_keyboard(browser: Browser, server: str) -> None:
    page = await browser.new_page()
    await sign_up(page, server, "threads@example.com")
    box = page.get_by_label("Message", exact=True)
    await box.fill("line one")
    await box.press("Shift+Enter")
    await box.type("line two")
    assert await box.input_value() == "line one\nline two"  # Shift+Enter: a new line, not sent
    await expect(page.locator(".msg.user")).to_have_count(0)
    await box.press("Enter")
    await expect(page.locator(".run")).to_have_class(re.compile("ended-completed"))
    await expect(page.locator("#threads li")).to_have_count(1)

    await page.get_by_role("button", name="Rename").click()  # in place, not a browser prompt
    await page.get_by_label("Thread title").fill("My first thread")
    await page.get_by_label("Thread title").press("Enter")
    await expect(page.locator("#threads li")).to_have_text(["My first thread"])
    await expect(page.locator("#thread-title")).to_have_text("My first thread")

    await page.get_by_role("button", name="+ New thread").click()
    await expect(page).to_have_url(re.compile(r"/$"))
    await ask(page, "What is 1+1?")
    await expect(page.locator(".run")).to_have_class(re.compile("ended-completed"))
    await expect(page.locator("#threads li")).to_have_count(2)
    await expect(page.locator("#threads li").first).to_have_text("What is 1+1?")  # by activity

    await page.get_by_role("button", name="Delete", exact=True).click()
    await page.get_by_role("alertdialog").get_by_role("button", name="Delete").click()
    await expect(page.locator("#threads li")).to_have_text(["My first thread"])
    await page.locator("#threads li a").click()
    await expect(page.locator(".msg.user .text")).to_have_text(["line one\nline two"])
    # Back returns to the previous view, Forward comes back here.
    await page.go_back()
    await expect(page.locator(".welcome")).to_be_visible()
    await page.go_forward()
    await expect(page.locator(".msg.user .text")).to_have_text(["line one\nline two"])


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
