"""Debian's Chromium driven by Playwright against a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from vendor import fetch_test_package

from chromium import CHROMIUM_ARGS, chromium_path
from serving import PASSWORD

CACHE = Path(__file__).resolve().parent / ".vendor"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


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
