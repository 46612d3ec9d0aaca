"""Debian's Chromium driven by Playwright against a real server.

One Chromium serves the whole session (launching one takes about a second) and each
test gets fresh contexts in it (a page opened with ``browser.new_page()`` is one),
closed after the test. Playwright's objects belong to the event loop that made them,
so the tests here, and the async fixtures they use, run in the session's loop
(``pytest_collection_modifyitems`` and ``pytest_fixture_setup`` below).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Playwright, async_playwright, expect
from vendor import fetch_test_package

from chromium import CHROMIUM_ARGS, chromium_path
from serving import PASSWORD

CACHE = Path(__file__).resolve().parent / ".vendor"
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the browser tests in the session's event loop, the one Chromium's belongs to."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any]) -> Generator[None, Any, Any]:
    """Set up every async fixture of a browser test (``server``, ``new_client`` ...) in the
    session's loop too, as the test runs there (this hook sees only this directory's
    tests; the fixture itself is unchanged for every other test)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fixturedef.func, "_loop_scope", "session", raising=False)
        return (yield)


class Chromium:
    """The session's Chromium, launched again if it went away."""

    def __init__(self, playwright: Playwright) -> None:
        self.playwright = playwright
        self.browser: Browser | None = None

    async def running(self) -> Browser:
        if self.browser is None or not self.browser.is_connected():
            self.browser = await self.playwright.chromium.launch(
                executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
            )
        return self.browser


EXPECT_TIMEOUT_MS = 30_000
"""How long ``expect`` waits for a page to show what it should (Playwright's default,
5 s, is too short on a busy machine: the wait ends as soon as the page shows it)."""


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chromium() -> AsyncIterator[Chromium]:
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    async with async_playwright() as playwright:
        shared = Chromium(playwright)
        yield shared
        if shared.browser is not None:
            await shared.browser.close()


@pytest_asyncio.fixture(loop_scope="session")
async def browser(chromium: Chromium) -> AsyncIterator[Browser]:
    """Chromium (the session's); the contexts and pages the test opened close after it."""
    running = await chromium.running()
    yield running
    for context in list(running.contexts):
        await context.close()


async def sign_up(page: Page, url: str, email: str, *, path: str = "") -> None:
    """Open the page, sign up as ``email`` and wait until the socket is online."""
    await page.goto(url + path)
    await page.get_by_role("button", name="No account? Sign up").click()
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await expect(page.locator("#connection")).to_have_text("online")


async def ask(page: Page, text: str) -> None:
    """Type ``text`` into the message box and press Enter."""
    await page.get_by_label("Message", exact=True).fill(text)
    await page.get_by_label("Message", exact=True).press("Enter")


def watch_errors(page: Page) -> list[str]:
    """Every uncaught exception of the page's scripts, as it happens."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


@pytest.fixture(scope="module")
def axe_source() -> str:
    """axe-core, fetched from the npm registry once and checked against the lock."""
    return (fetch_test_package("axe-core", CACHE) / "axe.min.js").read_text()


async def violations(page: Page, axe_source: str) -> list[dict[str, Any]]:
    """The serious, moderate and critical axe violations of what the page shows now."""
    if not await page.evaluate("() => typeof window.axe !== 'undefined'"):
        await page.evaluate(axe_source)
    found = await page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
            .map(v => ({id: v.id, impact: v.impact, help: v.help,
                        nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))"""
    )
    return [v for v in found if v["impact"] in ("moderate", "serious", "critical")]


async def log_in(page: Page, url: str, email: str) -> None:
    """Open the page, log in as ``email`` and wait until the socket is online."""
    await page.goto(url)
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#connection")).to_have_text("online")
