"""AG-UI (issue 16): ``POST /api/v1/agui`` streams AG-UI events for a real run; every
event is parsed with the ``ag-ui-protocol`` package's own types."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from ag_ui.core import Event, EventType
from pydantic import TypeAdapter

from atoll.client import AtollClient

from inprocess import running_app
from ports import free_port
from serving import PASSWORD, make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.inprocess]
EVENT = TypeAdapter(Event)


def run_input(thread_id: str, *messages: tuple[str, str]) -> dict[str, Any]:
    return {
        "threadId": thread_id,
        "runId": str(uuid.uuid4()),
        "messages": [
            {"id": str(uuid.uuid4()), "role": role, "content": content}
            for role, content in messages
        ],
        "tools": [],
        "context": [],
        "state": {},
        "forwardedProps": {},
    }


async def agui(
    client: AtollClient, body: dict[str, Any], **params: str
) -> tuple[httpx.Headers, list[Any]]:
    """POST the input as ``client``'s user; every ``data:`` line parsed as an AG-UI event."""
    events: list[Any] = []
    async with client.http.stream(
        "POST",
        "/api/v1/agui",
        json=body,
        params=params,
        headers={"Authorization": f"Bearer {client.access_token}", "Accept": "text/event-stream"},
    ) as answer:
        assert answer.status_code == 200, await answer.aread()
        assert answer.headers["content-type"].startswith("text/event-stream")
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                events.append(EVENT.validate_json(line[6:]))
        return answer.headers, events


def check_order(events: list[Any]) -> None:
    """AG-UI's rules: one RUN_STARTED first, one RUN_FINISHED/RUN_ERROR last; every text
    message, tool call and step opened before it is used and closed before the end."""
    assert events[0].type == EventType.RUN_STARTED
    assert events[-1].type in (EventType.RUN_FINISHED, EventType.RUN_ERROR)
    ends = [e for e in events if e.type in (EventType.RUN_FINISHED, EventType.RUN_ERROR)]
    assert len(ends) == 1
    open_messages: set[str] = set()
    open_calls: set[str] = set()
    steps: list[str] = []
    for event in events:
        match event.type:
            case EventType.TEXT_MESSAGE_START:
                open_messages.add(event.message_id)
            case EventType.TEXT_MESSAGE_CONTENT:
                assert event.message_id in open_messages and event.delta
            case EventType.TEXT_MESSAGE_END:
                open_messages.remove(event.message_id)
            case EventType.TOOL_CALL_START:
                open_calls.add(event.tool_call_id)
            case EventType.TOOL_CALL_ARGS:
                assert event.tool_call_id in open_calls
            case EventType.TOOL_CALL_END:
                open_calls.remove(event.tool_call_id)
            case EventType.STEP_STARTED:
                steps.append(event.step_name)
            case EventType.STEP_FINISHED:
                assert steps.pop() == event.step_name
    assert not open_messages and not open_calls and not steps


async def test_a_run_streams_as_agui_events_the_sdk_parses(app_client: Callable[..., Any]) -> None:
    ada: AtollClient = await app_client()
    body = run_input("client-thread-1", ("user", "What is 17*23?"))
    headers, events = await agui(ada, body)
    check_order(events)
    assert events[0].thread_id == "client-thread-1" and events[0].run_id == body["runId"]
    assert events[-1].type == EventType.RUN_FINISHED and events[-1].run_id == body["runId"]
    assert events[-1].usage and events[-1].usage[0].total_tokens > 0
    types = [e.type for e in events]
    for wanted in (
        EventType.STEP_STARTED, EventType.TOOL_CALL_START, EventType.TOOL_CALL_ARGS,
        EventType.TOOL_CALL_END, EventType.TOOL_CALL_RESULT, EventType.TEXT_MESSAGE_START,
        EventType.TEXT_MESSAGE_CONTENT, EventType.TEXT_MESSAGE_END, EventType.STEP_FINISHED,
        EventType.REASONING_MESSAGE_CONTENT,
    ):  # fmt: skip
        assert wanted in types, wanted
    starts = [e for e in events if e.type == EventType.TOOL_CALL_START]
    assert [s.tool_call_name for s in starts] == ["calculator"]
    results = [e for e in events if e.type == EventType.TOOL_CALL_RESULT]
    assert [r.tool_call_id for r in results] == [starts[0].tool_call_id]  # ran server-side
    assert "391" in results[0].content
    text = "".join(e.delta for e in events if e.type == EventType.TEXT_MESSAGE_CONTENT)
    assert "391" in text
    # The run is Ada's: stored in her thread, its answer the streamed text.
    thread_id = headers["Atoll-Thread-Id"]
    assert events[0].metadata["atoll"]["thread_id"] == thread_id
    page = await ada.request("GET", f"/threads/{thread_id}/messages")
    assert [(m["role"], m["content"]) for m in page["items"]] == [
        ("user", "What is 17*23?"),
        ("assistant", text),
    ]


async def test_the_clients_thread_id_keeps_one_atoll_thread_per_user(
    app_client: Callable[..., Any],
) -> None:
    ada: AtollClient = await app_client()
    bob: AtollClient = await app_client()
    first = run_input("shared-name", ("user", "My name is Ada."))
    headers, _ = await agui(ada, first)
    thread_id = headers["Atoll-Thread-Id"]
    second = run_input(
        "shared-name", ("user", "My name is Ada."), ("assistant", "Hi."), ("user", "Thanks")
    )
    again, events = await agui(ada, second)
    check_order(events)
    assert again["Atoll-Thread-Id"] == thread_id  # continued, not a new thread
    page = await ada.request("GET", f"/threads/{thread_id}/messages")
    assert [m["content"] for m in page["items"] if m["role"] == "user"] == [
        "My name is Ada.",
        "Thanks",
    ]
    # The same client name from another user is another thread; Ada's stays hers.
    bobs, _ = await agui(bob, run_input("shared-name", ("user", "hi")))
    assert bobs["Atoll-Thread-Id"] != thread_id
    # An Atoll thread id continues that thread, and only for its owner.
    own, _ = await agui(ada, run_input(thread_id, ("user", "more")))
    assert own["Atoll-Thread-Id"] == thread_id
    answer = await bob.http.post(
        "/api/v1/agui",
        json=run_input(thread_id, ("user", "let me in")),
        headers={"Authorization": f"Bearer {bob.access_token}"},
    )
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"


async def test_input_it_cannot_run_is_a_run_error_and_stores_nothing(
    app_client: Callable[..., Any],
) -> None:
    ada: AtollClient = await app_client()
    body = run_input("t-empty", ("assistant", "only me"))
    _, events = await agui(ada, body)
    assert [e.type for e in events] == [EventType.RUN_STARTED, EventType.RUN_ERROR]
    assert events[1].code == "validation_error"
    _, overlong = await agui(ada, run_input("t" * 5000, ("user", "hi")))
    assert [e.type for e in overlong] == [EventType.RUN_STARTED, EventType.RUN_ERROR]
    assert (await ada.request("GET", "/threads"))["items"] == []
    unknown = await ada.http.post(
        "/api/v1/agui",
        params={"agent": "nobody"},
        json=run_input("t", ("user", "hi")),
        headers={"Authorization": f"Bearer {ada.access_token}"},
    )
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_agent"
    anonymous = await ada.http.post("/api/v1/agui", json=run_input("t", ("user", "hi")))
    assert anonymous.status_code == 401


async def test_a_named_agent_runs(app_client: Callable[..., Any]) -> None:
    ada: AtollClient = await app_client()
    _, events = await agui(ada, run_input("t2", ("user", "What is 2+2?")), agent="assistant")
    check_order(events)
    steps = [e.step_name for e in events if e.type == EventType.STEP_STARTED]
    assert steps == ["assistant"]


async def test_a_run_that_fails_ends_with_run_error(tmp_path: Path) -> None:
    """The model is unreachable (nothing listens on its port): the run fails, and the
    stream says so with RUN_ERROR and the run's error code, after closing its step."""
    dead = {"llm_provider": "openai", "llm_base_url": f"http://127.0.0.1:{free_port()}/v1",
            "llm_api_key": "unused", "llm_model": "m"}  # fmt: skip
    settings = make_settings(tmp_path / "data", **dead)
    async with running_app(settings) as app, app.client() as ada:
        await ada.register("ada@example.com", PASSWORD)
        _, events = await agui(ada, run_input("t3", ("user", "hi")), agent="assistant")
    check_order(events)
    assert events[-1].type == EventType.RUN_ERROR
    assert events[-1].code and events[-1].message
