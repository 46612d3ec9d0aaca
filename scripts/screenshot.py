"""Takes the README's pictures: docs/screenshot.png (desktop) and
docs/screenshot-phone.png (a 390 px phone), the chat page in the middle of a run.

Starts Atoll in-process (fresh data directory, the offline model streaming slowly
so the run is caught mid-answer), signs up in Debian's Chromium through
Playwright, asks one question, then a second one, and photographs the page while
that answer streams (steps folded, as a reader sees them). Rerun any time:

    .venv/bin/python scripts/screenshot.py [--dark] [--output docs/screenshot.png]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

from atoll.config import Settings
from atoll.server.serve import running_server

from chromium import CHROMIUM_ARGS, chromium_path

ROOT = Path(__file__).resolve().parent.parent


async def take(output: Path, dark: bool) -> None:
    phone_output = output.with_name(f"{output.stem}-phone{output.suffix}")
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(data_dir=Path(data), offline_token_delay=0.25)
        async with running_server(settings) as (url, _), async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=chromium_path(), args=CHROMIUM_ARGS
            )
            scheme = "dark" if dark else "light"
            context = await browser.new_context(color_scheme=scheme)  # type: ignore[arg-type]
            page = await context.new_page()
            await page.set_viewport_size({"width": 1100, "height": 720})
            await page.goto(url)
            await page.get_by_role("button", name="No account? Sign up").click()
            await page.get_by_label("Email").fill("ada@example.com")
            await page.get_by_label("Password").fill("correct horse battery")
            await page.get_by_role("button", name="Sign up").click()
            await page.locator("#connection.online").wait_for()
            box = page.get_by_label("Message", exact=True)
            await box.fill("What is 17*23?")
            await box.press("Enter")
            await page.locator(".run.ended-completed").wait_for(timeout=60_000)
            await box.fill("What is sqrt(2) * pi + 10**20?")
            await box.press("Enter")
            streaming = page.locator(".run").nth(1).locator(".answer")
            await streaming.filter(has_text=re.compile(r"\S{3}.*\S{3}.*\S{3}")).wait_for()
            output.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(output))
            phone = await context.new_page()  # the same login (shared by tabs)
            await phone.set_viewport_size({"width": 390, "height": 844})
            await phone.goto(page.url)
            await phone.locator(".run.ended-completed").nth(1).wait_for(timeout=60_000)
            await phone.screenshot(path=str(phone_output))
            await browser.close()
    print(f"wrote {output} and {phone_output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--dark", action="store_true")
    args = parser.parse_args()
    asyncio.run(take(args.output, args.dark))


if __name__ == "__main__":
    main()
