"""Threads as a chat page uses them: by last activity, searched, paged from the end,
opened in one request, rated, exported, and followed from the user's other tabs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from atoll.client import ApiError, AtollClient

pytestmark = [pytest.mark.e2e]


async def said(client: AtollClient, text: str, thread_id: str | None = None) -> dict[str, Any]:
    """Send ``text`` and wait for its run to end; the accepted answer."""
    accepted = await client.chat(text, **({"thread_id": thread_id} if thread_id else {}))
    async for _ in client.stream(accepted["run"]["id"]):
        pass
    return accepted


async def every_thread(client: AtollClient, **query: Any) -> list[dict[str, Any]]:
    """Every page of ``GET /threads``, one thread per page."""
    found: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):
        params = {"limit": 1, **query, **({"cursor": cursor} if cursor else {})}
        page = await client.request("GET", "/threads", params=params)
        found += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found
    raise AssertionError("the pages never ended")


async def test_threads_are_listed_by_last_activity_and_paged_without_repeats(
    app_client: Any,
) -> None:
    client = await app_client()
    first = await said(client, "first thread")
    second = await said(client, "second thread")
    third = await said(client, "third thread")
    ids = [t["id"] for t in await every_thread(client)]
    assert ids == [third["thread_id"], second["thread_id"], first["thread_id"]]
    await said(client, "the oldest is active again", first["thread_id"])
    ids = [t["id"] for t in await every_thread(client)]
    assert ids == [first["thread_id"], third["thread_id"], second["thread_id"]]
    with pytest.raises(ApiError) as refused:
        await client.request("GET", "/threads", params={"cursor": "12"})
    assert refused.value.status == 422


async def test_search_finds_titles_and_messages_of_the_owner_only(app_client: Any) -> None:
    ada, eve = await app_client(), await app_client()
    weather = await said(ada, "What is the weather in Lisbon?")
    percent = await said(ada, "Compute 50% of 80")
    renamed = await said(ada, "hello")
    await ada.request("PATCH", f"/threads/{renamed['thread_id']}", json={"title": "Trip PLANS"})
    await said(eve, "lisbon is lovely, 50% of the time")

    async def search(client: AtollClient, q: str) -> set[str]:
        return {t["id"] for t in await every_thread(client, q=q)}

    assert await search(ada, "LISBON") == {weather["thread_id"]}
    assert await search(ada, "trip plans") == {renamed["thread_id"]}
    assert await search(ada, "50%") == {percent["thread_id"]}
    assert await search(ada, "%") == {percent["thread_id"]}  # a wildcard is only itself
    assert await search(ada, "_") == set()
    assert await search(ada, "nowhere at all") == set()
    for bad in ("", "x" * 201):
        with pytest.raises(ApiError) as refused:
            await ada.request("GET", "/threads", params={"q": bad})
        assert refused.value.status == 422


async def test_messages_page_back_from_the_newest(app_client: Any) -> None:
    client = await app_client()
    thread_id = None
    for turn in range(4):
        thread_id = (await said(client, f"turn {turn}", thread_id))["thread_id"]
    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10):
        params = {"order": "desc", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = await client.request("GET", f"/threads/{thread_id}/messages", params=params)
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    oldest_first = await client.request(
        "GET", f"/threads/{thread_id}/messages", params={"limit": 100}
    )
    assert [m["id"] for m in seen] == [m["id"] for m in oldest_first["items"]][::-1]
    assert len(seen) == 8 and seen[0]["role"] == "assistant" and seen[1]["content"] == "turn 3"


async def test_a_thread_s_runs_open_in_one_request_and_only_its_own(app_client: Any) -> None:
    ada, eve = await app_client(), await app_client()
    one = await said(ada, "What is 17*23?")
    two = await said(ada, "and 2+2?", one["thread_id"])
    elsewhere = await said(ada, "other thread")
    eves = await said(eve, "mine")
    runs = ",".join([one["run"]["id"], two["run"]["id"], elsewhere["run"]["id"], eves["run"]["id"]])
    path = f"/threads/{one['thread_id']}/events"
    answer = await ada.request("GET", path, params={"runs": runs})
    assert list(answer["runs"]) == [one["run"]["id"], two["run"]["id"]]
    for run_id, events in answer["runs"].items():
        assert events == await ada.events(run_id)
        assert any(e["type"] == "message_delta" for e in events)
    steps = await ada.request("GET", path, params={"runs": runs, "deltas": "false"})
    for events in steps["runs"].values():
        assert events and all(e["type"] != "message_delta" for e in events)
        assert events[-1]["type"] == "agent_completed"
    with pytest.raises(ApiError) as hidden:  # another user's thread: as if it did not exist
        await eve.request("GET", path, params={"runs": runs})
    assert hidden.value.status == 404
    for bad in (",".join(["run_x"] * 101), "run_a,,run_b", "run.a"):
        with pytest.raises(ApiError) as refused:
            await ada.request("GET", path, params={"runs": bad})
        assert refused.value.status == 422


async def test_feedback_on_answers_is_stored_shown_and_owner_scoped(app_client: Any) -> None:
    ada, eve = await app_client(), await app_client()
    accepted = await said(ada, "What is 2+2?")
    page = await ada.request("GET", f"/threads/{accepted['thread_id']}/messages")
    question, answer = page["items"]
    assert answer["role"] == "assistant" and answer["feedback"] is None
    path = f"/messages/{answer['id']}/feedback"
    rated = await ada.request("PUT", path, json={"rating": "down", "comment": "  too short  "})
    assert (rated["rating"], rated["comment"]) == ("down", "too short")
    rated = await ada.request("PUT", path, json={"rating": "up"})
    assert (rated["rating"], rated["comment"]) == ("up", None)
    assert (await ada.request("GET", path))["rating"] == "up"
    page = await ada.request("GET", f"/threads/{accepted['thread_id']}/messages")
    assert page["items"][1]["feedback"]["rating"] == "up"
    listed = await ada.request("GET", "/feedback")
    assert [f["message_id"] for f in listed["items"]] == [answer["id"]]
    assert (await eve.request("GET", "/feedback"))["items"] == []
    for client, target, body in (
        (eve, path, {"rating": "down"}),  # someone else's answer
        (ada, f"/messages/{question['id']}/feedback", {"rating": "up"}),  # not an answer
        (ada, "/messages/msg_nothing/feedback", {"rating": "up"}),
    ):
        with pytest.raises(ApiError) as missing:
            await client.request("PUT", target, json=body)
        assert missing.value.status == 404
    for body in ({"rating": "meh"}, {"rating": "up", "comment": "x" * 2001}, {}):
        with pytest.raises(ApiError) as refused:
            await ada.request("PUT", path, json=body)
        assert refused.value.status == 422
    await ada.request("DELETE", path)
    with pytest.raises(ApiError) as gone:
        await ada.request("GET", path)
    assert gone.value.status == 404
    await ada.request("PUT", path, json={"rating": "down"})
    await ada.request("DELETE", f"/threads/{accepted['thread_id']}")
    assert (await ada.request("GET", "/feedback"))["items"] == []


async def test_a_thread_exports_as_markdown_and_json(app_client: Any) -> None:
    ada, eve = await app_client(), await app_client()
    accepted = await said(ada, "What is 17*23?")
    await said(ada, "Thanks! <b>bold</b>", accepted["thread_id"])
    path = f"/api/v1/threads/{accepted['thread_id']}/export"
    markdown = await ada.http.get(path, headers=ada._headers())
    assert markdown.status_code == 200
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert "attachment" in markdown.headers["content-disposition"]
    text = markdown.text
    assert text.startswith("# What is 17*23?")
    assert text.count("## You") == 2 and text.count("## Assistant") == 2
    assert "391" in text and "Thanks! <b>bold</b>" in text
    exported = await ada.http.get(path, params={"format": "json"}, headers=ada._headers())
    document = json.loads(exported.text)
    assert document["thread"]["id"] == accepted["thread_id"]
    assert [m["role"] for m in document["messages"]] == ["user", "assistant"] * 2
    assert (await eve.http.get(path, headers=eve._headers())).status_code == 404
    bad = await ada.http.get(path, params={"format": "pdf"}, headers=ada._headers())
    assert bad.status_code == 422


async def next_notice(socket: Any, within: float = 5.0) -> dict[str, Any]:
    """The next thread or message notice on ``socket`` (run frames are skipped)."""
    async with asyncio.timeout(within):
        while True:
            frame = await socket.receive()
            if frame["type"].startswith(("thread_", "message_created")):
                return frame


async def test_the_user_s_other_tabs_follow_threads_and_messages(new_client: Any) -> None:
    ada, eve = await new_client(), await new_client()
    async with ada.connect() as tab1, ada.connect() as tab2, eve.connect() as stranger:
        ack = await tab1.send_message("What is 6*7?")
        created = await next_notice(tab2)
        assert created["type"] == "message_created"
        assert created["message"]["content"] == "What is 6*7?"
        assert created["message"]["id"] == ack["message_id"]
        assert created["thread"]["id"] == ack["thread_id"]
        assert (await next_notice(tab1))["type"] == "message_created"  # the sender's too
        thread_id = ack["thread_id"]
        await ada.request("PATCH", f"/threads/{thread_id}", json={"title": "Answers"})
        renamed = await next_notice(tab2)
        assert renamed["type"] == "thread_updated" and renamed["thread"]["title"] == "Answers"
        fresh = await ada.request("POST", "/threads", json={"title": "empty"})
        made = await next_notice(tab2)
        assert made["type"] == "thread_created" and made["thread"]["id"] == fresh["id"]
        await ada.request("DELETE", f"/threads/{thread_id}")
        deleted = await next_notice(tab2)
        assert deleted == {"type": "thread_deleted", "thread_id": thread_id}
        # The other user saw none of it: the next frame they get is the answer to a ping.
        await stranger.send({"type": "ping"})
        assert await stranger.receive() == {"type": "pong"}
