"""axe-core on every view of the page (login, chat, phone, dark): no serious or moderate
violation; keyboard-only use with a skip link and a visible focus."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from atoll.server.serve import running_server
from conftest import ask, sign_up, violations
from integration.fake_openai import API_KEY, serve_fake_openai

pytestmark = pytest.mark.e2e
MARKDOWN = (
    "say: ## Result\n\nA table:\n\n| name | value |\n|---|---|\n| x | 1 |\n\n"
    "```python\nprint('hello')\n```\n\n- [x] done\n- [ ] next\n\n[docs](https://example.com)"
)


@pytest.fixture
async def markdown_server(settings_factory: Callable[..., Any]) -> AsyncIterator[str]:
    async with serve_fake_openai() as fake:
        settings = settings_factory(
            llm_provider="openai", llm_base_url=fake.base_url, llm_api_key=API_KEY,
            llm_model="fake-model",
        )  # fmt: skip
        async with running_server(settings) as (url, _):
            yield url


async def chat_with_answers(page: Page, url: str, email: str) -> None:
    await sign_up(page, url, email)
    await page.get_by_label("Agent").select_option("supervisor")
    await ask(page, "What is 17*23?")
    await expect(page.locator(".run").last).to_have_class(re.compile("ended-completed"))
    await page.get_by_label("Agent").select_option("assistant")
    await ask(page, MARKDOWN)
    await expect(page.locator(".run").last.locator(".answer table")).to_be_visible()
    await page.locator(".run").first.locator(".steps > summary").click()  # the cards too


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_login_and_chat_have_no_serious_or_moderate_violations(
    browser: Browser, markdown_server: str, axe_source: str, scheme: str
) -> None:
    page = await browser.new_page(color_scheme=scheme)  # type: ignore[arg-type]
    await page.goto(markdown_server)
    await expect(page.get_by_role("button", name="Log in")).to_be_visible()
    assert await violations(page, axe_source) == [], "login"
    await page.get_by_role("button", name="Log in").click()  # with its error shown
    await expect(page.locator("#auth-error")).to_be_visible()
    assert await violations(page, axe_source) == [], "login error"
    await sign_up(page, markdown_server, f"axe-{scheme}@example.com")
    await expect(page.locator(".welcome")).to_be_visible()
    assert await violations(page, axe_source) == [], "welcome"
    await page.reload()
    await expect(page.locator("#connection")).to_have_text("online")
    await page.get_by_label("Agent").select_option("supervisor")
    await ask(page, "What is 17*23?")
    await expect(page.locator(".run").last).to_have_class(re.compile("ended-completed"))
    await page.get_by_label("Agent").select_option("assistant")
    await ask(page, MARKDOWN)
    await expect(page.locator(".run").last.locator(".answer table")).to_be_visible()
    await page.locator(".run").first.locator(".steps > summary").click()
    await page.get_by_role("button", name="Bad answer").last.click()  # the comment form
    assert await violations(page, axe_source) == [], "chat"
    await page.get_by_role("button", name="Rename").click()
    assert await violations(page, axe_source) == [], "rename"


async def test_the_phone_view_and_its_drawer_have_no_violations(
    browser: Browser, markdown_server: str, axe_source: str
) -> None:
    page = await browser.new_page(viewport={"width": 390, "height": 844})
    await chat_with_answers(page, markdown_server, "axe-phone@example.com")
    assert await violations(page, axe_source) == [], "phone chat"
    await page.get_by_role("button", name="Show the thread list").click()
    await expect(page.locator(".sidebar")).to_be_visible()
    assert await violations(page, axe_source) == [], "phone drawer"


async def test_keyboard_only_skip_link_and_visible_focus(browser: Browser, server: str) -> None:
    page = await browser.new_page()
    await sign_up(page, server, "keys@example.com")
    for _ in range(4):  # a few threads, so that Tab through the list would take long
        await page.get_by_role("button", name="+ New thread").click()
        await ask(page, "What is 2+3?")
        await expect(page.locator(".run").last).to_have_class(re.compile("ended-completed"))
    await page.reload()
    await expect(page.locator("#connection")).to_have_text("online")
    box = page.get_by_label("Message", exact=True)
    await expect(box).to_be_focused()  # where the page puts you
    await page.locator(".brand").click()  # somewhere in the thread list
    await page.keyboard.press("Shift+Tab")
    skip = page.get_by_role("link", name="Skip to the message box")
    await expect(skip).to_be_focused()
    await expect(skip).to_be_in_viewport()  # shown when focused
    await page.keyboard.press("Enter")
    await expect(box).to_be_focused()
    outline = await box.evaluate("e => getComputedStyle(e).outlineStyle")
    assert outline != "none"
    await page.keyboard.type("What is 6+7?")
    await page.keyboard.press("Enter")
    await expect(page.locator(".run").last.locator(".answer")).to_contain_text("13")
    # The steps open from the keyboard, and a thread is reachable and opens with Enter.
    await page.locator(".run").last.locator(".steps > summary").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator(".run").last.locator(".step-card.tool")).to_be_visible()
    await page.locator("#threads li a").last.focus()
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"/t/thr_"))
