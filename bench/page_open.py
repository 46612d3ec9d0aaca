"""Opening a long thread in the chat page, and searching threads.

    python bench/page_open.py [--runs 50] [--threads 200] [--write]

Starts Atoll in-process (SQLite, the offline model), makes one user with a thread
of ``--runs`` runs and ``--threads`` more threads of two messages each, then in
Debian's Chromium (Playwright) opens the long thread by its URL five times and
reports the time from navigation until its newest answer is shown, and how many
API requests that took (issue 13 reported 50 requests and 2.6 s for a 50-run
thread). Then it times ``GET /threads?q=`` over every message of the user.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playwright.async_api import async_playwright

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "scripts")]

from atoll.client import AtollClient  # noqa: E402
from atoll.config import Settings  # noqa: E402
from atoll.server.serve import running_server  # noqa: E402

from chromium import CHROMIUM_ARGS, chromium_path  # noqa: E402
from report import percentile, write_section  # noqa: E402

PASSWORD = "correct horse battery"


async def said(client: AtollClient, text: str, thread_id: str | None) -> str:
    accepted = await client.chat(text, **({"thread_id": thread_id} if thread_id else {}))
    async for _ in client.stream(accepted["run"]["id"]):
        pass
    return str(accepted["thread_id"])


async def measure(runs: int, threads: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(data_dir=Path(data), messages_per_minute=100_000)
        async with running_server(settings) as (url, _), AtollClient(url) as client:
            await client.register("bench@example.com", PASSWORD)
            thread_id = None
            for turn in range(runs):
                thread_id = await said(client, f"What is {turn}*3?", thread_id)
            for number in range(threads):
                await said(client, f"Other question {number}: What is {number}+2?", None)
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
                )
                page = await browser.new_page()
                await page.goto(url)
                await page.get_by_label("Email").fill("bench@example.com")
                await page.get_by_label("Password").fill(PASSWORD)
                await page.get_by_role("button", name="Log in").click()
                await page.locator("#connection.online").wait_for()
                opens: list[float] = []
                requests: list[int] = []
                calls: list[str] = []
                page.on("request", lambda request: calls.append(request.url))
                for _ in range(5):
                    calls.clear()
                    started = time.perf_counter()
                    await page.goto(f"{url}/t/{thread_id}")
                    last = f"{runs - 1}*3 = {(runs - 1) * 3}"
                    await page.locator(".run.last .answer", has_text=last).wait_for()
                    opens.append(time.perf_counter() - started)
                    requests.append(sum("/api/v1/threads/" in c for c in calls))
                await browser.close()
            searches: list[float] = []
            for word in ("What", "zebra", "17", "Other question 5"):
                for _ in range(5):
                    started = time.perf_counter()
                    await client.request("GET", "/threads", params={"q": word, "limit": 50})
                    searches.append(time.perf_counter() - started)
    return {
        "runs_in_thread": runs,
        "other_threads": threads,
        "messages_searched": 2 * (runs + threads),
        "open_s": {"median": round(statistics.median(opens), 3), "max": round(max(opens), 3)},
        "thread_api_requests_per_open": max(requests),
        "search_ms": {
            "p50": round(percentile(searches, 0.5) * 1000, 1),
            "max": round(max(searches) * 1000, 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=200)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    result = asyncio.run(measure(args.runs, args.threads))
    print(result)
    if args.write:
        command = "python " + " ".join(["bench/page_open.py", *sys.argv[1:]])
        write_section("page-open", command, result)


if __name__ == "__main__":
    main()
