"""Takes docs/screenshot.png: the chat page in the middle of a run.

Starts Atoll in-process (fresh data directory, the offline model streaming slowly
so the run is caught mid-answer), signs up in Debian's Chromium through
Playwright, asks "What is 17*23?" and photographs the timeline while the answer
streams. Rerun any time:

    .venv/bin/python scripts/screenshot.py [--dark] [--output docs/screenshot.png]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

from atoll.config import Settings
from atoll.server.serve import running_server

from chromium import CHROMIUM_ARGS, chromium_path

ROOT = Path(__file__).resolve().parent.parent


async def take(output: Path, dark: bool) -> None:
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(data_dir=Path(data), offline_token_delay=0.4)
        async with running_server(settings) as (url, _), async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=chromium_path(), args=CHROMIUM_ARGS
            )
            page = await browser.new_page(
                viewport={"width": 1100, "height": 720},
                color_scheme="dark" if dark else "light",
            )
            await page.goto(url)
            await page.get_by_role("button", name="No account? Sign up").click()
            await page.get_by_label("Email").fill("ada@example.com")
            await page.get_by_label("Password").fill("correct horse battery")
            await page.get_by_role("button", name="Sign up").click()
            await page.locator("#connection.online").wait_for()
            await page.get_by_label("Message").fill("What is 17*23?")
            await page.get_by_label("Message").press("Enter")
            await page.locator(".tool .result", has_text="391").wait_for()
            await page.wait_for_function(
                "document.querySelector('.run .answer')?.textContent.length > 20"
            )
            output.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(output))
            await browser.close()
    print(f"wrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--dark", action="store_true")
    args = parser.parse_args()
    asyncio.run(take(args.output, args.dark))


if __name__ == "__main__":
    main()
