"""The chat page as people who use Chainlit or Open WebUI expect it (issue 13): long
threads, failed sends, safe Markdown, several tabs, scrolling, phones, feedback."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from atoll.client import ApiError, AtollClient
from atoll.server.serve import running_server
from conftest import ask, sign_up, watch_errors
from integration.fake_openai import API_KEY, serve_fake_openai

from serving import PASSWORD, make_settings

pytestmark = pytest.mark.e2e
COMPLETED = re.compile("ended-completed")


async def log_in(page: Page, url: str, email: str, *, path: str = "") -> None:
    await page.goto(url + path)
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#connection")).to_have_text("online")


async def said(client: AtollClient, text: str, thread_id: str | None = None) -> dict[str, Any]:
    accepted = await client.chat(text, **({"thread_id": thread_id} if thread_id else {}))
    async for _ in client.stream(accepted["run"]["id"]):
        pass
    return accepted


async def test_a_150_message_thread_opens_at_its_newest_and_pages_back(
    browser: Browser, settings_factory: Callable[..., Any]
) -> None:
    async with running_server(settings_factory(messages_per_minute=1000)) as (url, _):
        async with AtollClient(url) as client:
            await client.register("long@example.com", PASSWORD)
            thread_id = None
            for turn in range(75):
                thread_id = (await said(client, f"turn {turn}: What is {turn}+1?", thread_id))[
                    "thread_id"
                ]
        page = await browser.new_page(viewport={"width": 1000, "height": 700})
        errors = watch_errors(page)
        api_calls: list[str] = []
        page.on(
            "request", lambda r: api_calls.append(r.url) if "/api/v1/threads/" in r.url else None
        )
        await log_in(page, url, "long@example.com", path=f"/t/{thread_id}")
        last = page.locator(".msg.user .text").last
        await expect(last).to_have_text("turn 74: What is 74+1?")
        await expect(page.locator(".run.last .answer")).to_contain_text("74+1 = 75")
        assert await last.is_visible()  # opened at the bottom
        first_page = len(api_calls)
        assert (
            first_page <= 3
        )  # the thread, its newest messages, their runs' steps: not one per run
        timeline = page.locator("#timeline")
        for _ in range(20):  # scroll to the top until the start of the thread is shown
            if await page.locator(".history-start").count():
                break
            await timeline.evaluate(
                "t => { t.scrollTop = 0; t.dispatchEvent(new Event('scroll')); }"
            )
            await page.wait_for_timeout(100)
        await expect(page.locator(".history-start")).to_be_visible()
        texts = await page.locator(".msg.user .text").all_text_contents()
        assert texts == [f"turn {n}: What is {n}+1?" for n in range(75)]
        assert await page.locator(".run").count() == 75
        events_calls = [c for c in api_calls if "/events?" in c]
        assert len(events_calls) == 5  # one per page of 30 messages
    assert errors == []


async def test_a_refused_send_keeps_its_text_with_retry_and_edit(
    browser: Browser, settings_factory: Callable[..., Any]
) -> None:
    async with running_server(settings_factory(messages_per_minute=1)) as (url, _):
        page = await browser.new_page()
        await sign_up(page, url, "refused@example.com")
        await ask(page, "What is 1+1?")
        await expect(page.locator(".run")).to_have_class(COMPLETED)
        await ask(page, "What is 2+2?")
        failed = page.locator(".msg.user.failed")
        await expect(failed).to_contain_text("Not sent: You are sending messages too fast.")
        await expect(failed.get_by_role("button", name="Retry")).to_be_visible()
        # The text is not lost: it is in the bubble and back in the box.
        assert await page.get_by_label("Message", exact=True).input_value() == "What is 2+2?"
        await failed.get_by_role("button", name="Edit").click()
        await expect(failed).to_have_count(0)
        assert await page.get_by_label("Message", exact=True).input_value() == "What is 2+2?"
        await page.reload()  # the refused message was never stored: one question, one answer
        await expect(page.locator(".msg.user .text")).to_have_text(["What is 1+1?"])


async def test_a_send_while_the_server_is_down_is_kept_and_retried(
    browser: Browser, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "data")
    async with running_server(settings) as (url, _):
        page = await browser.new_page()
        await sign_up(page, url, "down@example.com")
        port = int(url.rsplit(":", 1)[1])
    await expect(page.locator("#connection")).to_contain_text("retrying in")
    await ask(page, "What is 3*3?")
    failed = page.locator(".msg.user.failed")
    await expect(failed).to_contain_text("Not sent: Can't reach the server.")
    async with running_server(settings, port=port):
        await page.get_by_role("button", name="Retry now").click()
        await expect(page.locator("#connection")).to_have_text("online")
        await expect(page.locator("#chat-error")).to_be_hidden()
        await failed.get_by_role("button", name="Retry").click()
        await expect(page.locator(".run")).to_have_class(COMPLETED)
        await expect(page.locator(".run .answer")).to_contain_text("3*3 = 9")
        await expect(page.locator(".msg.user.failed")).to_have_count(0)


async def test_while_a_run_is_going_the_composer_offers_queue_or_stop(
    browser: Browser, settings_factory: Callable[..., Any]
) -> None:
    async with serve_fake_openai() as fake:
        settings = settings_factory(
            llm_provider="openai", llm_base_url=fake.base_url, llm_api_key=API_KEY,
            llm_model="fake-model",
        )  # fmt: skip
        async with running_server(settings) as (url, _):
            page = await browser.new_page()
            await sign_up(page, url, "busy@example.com")
            await page.get_by_label("Agent").select_option("assistant")
            await ask(page, "gate")  # its first word, then it waits: in progress until the end
            await expect(page.locator(".run .answer")).not_to_have_text("")
            await ask(page, "What is 4*4?")
            choice = page.get_by_role("group", name="A run is in progress")
            await expect(choice).to_be_visible()
            await choice.get_by_role("button", name="Send after it").click()
            await expect(page.locator(".run")).to_have_count(2)
            await ask(page, "say: 5*5 = 25")
            await choice.get_by_role("button", name="Stop it and send").click()
            await expect(page.locator(".run").nth(2)).to_have_class(COMPLETED)
            await expect(page.locator(".run").nth(2).locator(".answer")).to_contain_text("25")
            # It stopped what was in progress: the answer being written and the one queued.
            await expect(page.locator(".state.cancelled")).to_have_text(
                ["Stopped: you sent a new message.", "Stopped: you sent a new message."]
            )
            await expect(page.locator(".msg.user.failed")).to_have_count(0)
            fake.gate.set()


async def test_markdown_is_rendered_and_html_in_answers_or_messages_never_runs(
    browser: Browser, settings_factory: Callable[..., Any]
) -> None:
    async with serve_fake_openai() as fake:
        settings = settings_factory(
            llm_provider="openai", llm_base_url=fake.base_url, llm_api_key=API_KEY,
            llm_model="fake-model",
        )  # fmt: skip
        async with running_server(settings) as (url, _):
            page = await browser.new_page()
            errors = watch_errors(page)
            await sign_up(page, url, "markdown@example.com")
            await page.get_by_label("Agent").select_option("assistant")
            hostile = (
                "say: # Title\n\n**bold** and `code`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
                "- [x] done\n- [ ] to do\n\n```python\ndef f(x):\n    return x * 2\n```\n\n"
                '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
                '[click](javascript:window.pwned=3) <a href="https://example.com">site</a>'
            )
            await ask(page, hostile)
            answer = page.locator(".run .answer")
            await expect(page.locator(".run")).to_have_class(COMPLETED)
            await expect(answer.locator("h1")).to_have_text("Title")
            await expect(answer.locator("strong")).to_have_text("bold")
            await expect(answer.locator("table td")).to_have_text(["1", "2"])
            await expect(answer.locator("li .task")).to_have_count(2)
            await expect(answer.locator("pre code .hljs-keyword").first).to_have_text("def")
            assert await answer.locator("script, img, iframe, [onerror]").count() == 0
            for link in await answer.locator("a").all():
                href = await link.get_attribute("href") or ""
                assert not href.lower().startswith("javascript"), href
                assert await link.get_attribute("rel") == "noopener noreferrer nofollow"
            question = page.locator(".msg.user .text")
            await expect(question).to_contain_text("<script>window.pwned = 1</script>")  # as text
            await page.reload()  # the stored answer renders the same way
            await expect(page.locator(".run .answer strong")).to_have_text("bold")
            assert await page.evaluate("() => window.pwned") is None
            # Copy a code block and the whole answer.
            await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
            await page.locator(".code-bar").get_by_role("button", name="Copy code").click()
            copied = await page.evaluate("() => navigator.clipboard.readText()")
            assert copied == "def f(x):\n    return x * 2\n"
            await page.get_by_role("button", name="Copy answer").click()
            copied = await page.evaluate("() => navigator.clipboard.readText()")
            assert copied.startswith("# Title") and "<script>" in copied
    assert errors == []


async def test_tabs_share_the_login_and_follow_each_other(browser: Browser, server: str) -> None:
    context = await browser.new_context()
    one, two = await context.new_page(), await context.new_page()
    await sign_up(one, server, "tabs@example.com")
    await two.goto(server)  # the same login: no second sign-in
    await expect(two.locator("#connection")).to_have_text("online")
    await ask(one, "What is 6*7?")
    await expect(one.locator(".run")).to_have_class(COMPLETED)
    await expect(two.locator("#threads li")).to_have_text(["What is 6*7?"])  # pushed, not polled
    await two.locator("#threads li a").click()
    await expect(two.locator(".run .answer")).to_contain_text("42")
    await ask(one, "What is 7*8?")
    # The other tab shows the question and the run, in order, as it happens.
    await expect(two.locator(".msg.user .text")).to_have_text(["What is 6*7?", "What is 7*8?"])
    await expect(two.locator(".run").nth(1)).to_have_class(COMPLETED)
    await expect(two.locator(".run").nth(1).locator(".answer")).to_contain_text("56")
    await one.get_by_role("button", name="Rename").click()
    await one.get_by_label("Thread title").fill("Products")
    await one.get_by_label("Thread title").press("Enter")
    await expect(two.locator("#thread-title")).to_have_text("Products")
    await expect(two.locator("#threads li")).to_have_text(["Products"])
    await one.get_by_role("button", name="Delete", exact=True).click()
    await one.get_by_role("alertdialog").get_by_role("button", name="Delete").click()
    await expect(two.locator("#notice")).to_have_text("This thread was deleted in another tab.")
    await expect(two.locator("#threads li")).to_have_count(0)
    await one.get_by_role("button", name="Log out").click()
    await expect(two.get_by_role("button", name="Log in")).to_be_visible()


async def test_refreshing_is_single_flight_across_tabs(
    browser: Browser, settings_factory: Callable[..., Any]
) -> None:
    """Two tabs whose token expired make two calls each; the server revokes the whole
    session if a refresh token is spent twice, so all four must share one refresh."""
    async with running_server(settings_factory(access_token_ttl=2.0)) as (url, _):
        context = await browser.new_context()
        one, two = await context.new_page(), await context.new_page()
        await sign_up(one, url, "refresh@example.com")
        await two.goto(url)
        await expect(two.locator("#connection")).to_have_text("online")
        token = await one.evaluate("() => localStorage.getItem('atoll.access')")
        async with AtollClient(url) as client:
            client.access_token = token
            refused = None
            for _ in range(100):  # until the access token has expired (2 s)
                try:
                    await client.request("GET", "/me")
                except ApiError as exc:
                    refused = exc
                    break
                await asyncio.sleep(0.1)
            assert refused is not None and refused.code == "token_expired"
        script = """async () => {
            const link = document.querySelector('link[rel=modulepreload]').href;
            const { request } = await import(link);
            const answers = await Promise.all([request('GET', '/me'), request('GET', '/agents')]);
            return answers[0].email;
        }"""
        emails = await asyncio.gather(one.evaluate(script), two.evaluate(script))
        assert emails == ["refresh@example.com", "refresh@example.com"]
        assert await one.evaluate("() => localStorage.getItem('atoll.access')") != token
        await one.reload()  # still signed in: the session was not revoked
        await expect(one.locator("#connection")).to_have_text("online")


async def test_reading_above_is_not_pulled_down_and_jump_to_latest(
    browser: Browser, settings_factory: Callable[..., Any]
) -> None:
    async with serve_fake_openai() as fake:
        settings = settings_factory(
            llm_provider="openai", llm_base_url=fake.base_url, llm_api_key=API_KEY,
            llm_model="fake-model",
        )  # fmt: skip
        async with running_server(settings) as (url, _):
            page = await browser.new_page(viewport={"width": 900, "height": 500})
            await sign_up(page, url, "scroll@example.com")
            await page.get_by_label("Agent").select_option("assistant")
            for turn in range(3):  # enough to scroll
                await ask(page, f"say: {'A long answer to read again. ' * 24}({turn})")
                await expect(page.locator(".run").last).to_have_class(COMPLETED)
            # The model writes its first word, then waits (the gate) until the reader has
            # scrolled up: the rest arrives below what is being read, whatever the pace.
            await ask(page, "gate")
            await expect(page.locator(".run").last.locator(".answer")).to_have_text("Waiting")
            timeline = page.locator("#timeline")
            assert await timeline.evaluate("t => t.scrollHeight - t.clientHeight") > 400
            await timeline.evaluate(
                "t => { t.scrollTop = 0; t.dispatchEvent(new Event('scroll')); }"
            )
            jump = page.get_by_role("button", name="↓ Jump to the latest")
            await expect(jump).to_be_hidden()
            fake.gate.set()
            await expect(page.locator(".run").last).to_have_class(COMPLETED)
            await expect(page.locator(".run").last.locator(".answer")).to_have_text("Waiting done.")
            await expect(jump).to_be_visible()  # new text arrived below what is being read
            assert await timeline.evaluate("t => t.scrollTop") < 300  # and it stayed put
            await jump.click()
            assert (
                await timeline.evaluate("t => t.scrollHeight - t.scrollTop - t.clientHeight") < 48
            )
            await expect(jump).to_be_hidden()


async def test_phone_drawer_badge_and_a_short_answer_on_one_screen(
    browser: Browser, server: str
) -> None:
    page = await browser.new_page(viewport={"width": 390, "height": 844})
    await sign_up(page, server, "phone@example.com")
    await expect(page.locator("#connection")).to_be_visible()  # outside the drawer
    await expect(page.locator(".sidebar")).to_be_hidden()
    await ask(page, "What is 5*5?")
    await expect(page.locator(".run")).to_have_class(COMPLETED)
    box = await page.locator(".run").bounding_box()
    assert box is not None
    assert box["x"] + box["width"] <= 390  # nothing wider than the screen
    assert box["height"] < 300  # the steps are folded: the answer is what you see
    toggle = page.get_by_role("button", name="Show the thread list")
    await toggle.click()
    await expect(page.locator(".sidebar")).to_be_visible()
    await expect(page.locator("#threads li")).to_have_count(1)
    await page.keyboard.press("Escape")
    await expect(page.locator(".sidebar")).to_be_hidden()
    await toggle.click()
    await page.mouse.click(380, 400)  # outside the drawer
    await expect(page.locator(".sidebar")).to_be_hidden()


async def test_feedback_agent_choice_search_and_export(browser: Browser, server: str) -> None:
    page = await browser.new_page()
    await sign_up(page, server, "feedback@example.com")
    await page.get_by_label("Agent").select_option("assistant")
    await ask(page, "What is 9*9?")
    await expect(page.locator(".run")).to_have_class(COMPLETED)
    await page.get_by_role("button", name="Good answer").click()
    await expect(page.get_by_role("button", name="Good answer")).to_have_attribute(
        "aria-pressed", "true"
    )
    await page.get_by_role("button", name="Bad answer").click()
    await page.get_by_label("What was wrong? (optional)").fill("too terse")
    await page.get_by_role("button", name="Send feedback").click()
    await expect(page.get_by_text("Thanks for the feedback.")).to_be_visible()
    token = await page.evaluate("() => localStorage.getItem('atoll.access')")
    async with AtollClient(server) as client:
        client.access_token = token
        stored = (await client.request("GET", "/feedback"))["items"]
    assert [(f["rating"], f["comment"]) for f in stored] == [("down", "too terse")]
    await page.reload()  # the agent picked and the rating stay
    await expect(page.get_by_label("Agent")).to_have_value("assistant")
    await expect(page.get_by_role("button", name="Bad answer")).to_have_attribute(
        "aria-pressed", "true"
    )
    await page.get_by_role("button", name="+ New thread").click()
    await ask(page, "What is 8+8?")
    await expect(page.locator(".run")).to_have_class(COMPLETED)
    await expect(page.locator("#threads li")).to_have_count(2)
    await page.get_by_label("Search threads").fill("9*9")
    await expect(page.locator("#threads li")).to_have_text(["What is 9*9?"])
    await page.get_by_label("Search threads").fill("")
    await expect(page.locator("#threads li")).to_have_count(2)
    async with page.expect_download() as download:
        await page.get_by_role("button", name="Export").click()
    path = await (await download.value).path()
    text = await asyncio.to_thread(Path(path).read_text)
    assert text.startswith("# What is 8+8?") and "8+8 = 16" in text


async def test_regenerate_and_edit_the_last_message(browser: Browser, server: str) -> None:
    page = await browser.new_page()
    await sign_up(page, server, "again@example.com")
    await ask(page, "What is 2+2?")
    await expect(page.locator(".run")).to_have_class(COMPLETED)
    await expect(page.get_by_role("button", name="Regenerate")).to_have_count(1)  # the last only
    await page.get_by_role("button", name="Regenerate").click()
    await expect(page.locator(".run")).to_have_count(2)
    await expect(page.locator(".run").nth(1)).to_have_class(COMPLETED)
    await expect(page.locator(".run").nth(1).locator(".answer")).to_contain_text("2+2 = 4")
    await expect(page.locator(".msg.user .text")).to_have_text(["What is 2+2?", "What is 2+2?"])
    await expect(page.get_by_role("button", name="Regenerate")).to_have_count(1)
    await expect(page.get_by_role("button", name="Edit and resend")).to_have_count(1)
    await page.get_by_role("button", name="Edit and resend").click()
    box = page.get_by_label("Message", exact=True)
    await expect(box).to_have_value("What is 2+2?")
    await expect(box).to_be_focused()
    await box.fill("What is 2+3?")
    await box.press("Enter")
    await expect(page.locator(".run").nth(2).locator(".answer")).to_contain_text("2+3 = 5")
