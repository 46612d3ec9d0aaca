"""``/threads``, their messages, events and exports; feedback on answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import Field

from atoll.server.bodies import StrictJSONRoute
from atoll.server.deps import PrincipalDep, ServicesDep
from atoll.server.problems import problems
from atoll.server.schemas import (
    INTEGER_TEXT,
    FeedbackBody,
    FeedbackOut,
    FeedbackPage,
    MessagePage,
    RunEventsOut,
    ThreadCreate,
    ThreadOut,
    ThreadPage,
    ThreadPatch,
    feedback_out,
    message_out,
    thread_out,
)
from atoll.store.bounds import ACTIVITY_CURSOR_PATTERN, CURSOR_PATTERN, MAX_SEARCH_CHARS
from atoll.store.models import Message, Thread

router = APIRouter(tags=["threads"], route_class=StrictJSONRoute)

Limit = Annotated[int, Field(ge=1, le=100), INTEGER_TEXT, Query()]
Cursor = Annotated[
    str | None,
    Query(pattern=CURSOR_PATTERN, description="The next_cursor of the previous page"),
]
ActivityCursor = Annotated[
    str | None,
    Query(pattern=ACTIVITY_CURSOR_PATTERN, description="The next_cursor of the previous page"),
]
Search = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=MAX_SEARCH_CHARS,
        description="Only threads whose title or any message contains this text",
    ),
]
RUN_IDS_PATTERN = r"^[A-Za-z0-9_-]{1,64}(,[A-Za-z0-9_-]{1,64}){0,99}$"
"""Up to 100 run ids, comma-separated."""
EXPORT_FORMATS = ("markdown", "json")


@router.post("/threads", status_code=201, responses=problems(401, 413, 422, 503))
async def create_thread(
    principal: PrincipalDep, services: ServicesDep, body: ThreadCreate | None = None
) -> ThreadOut:
    """Start a new, empty thread."""
    body = body or ThreadCreate()
    thread = await services.chat.create_thread(
        principal.user_id, title=body.title, meta=body.metadata or {}
    )
    await services.notices.thread("thread_created", thread)
    return thread_out(thread)


@router.get("/threads", responses=problems(401, 422, 503))
async def list_threads(
    principal: PrincipalDep,
    services: ServicesDep,
    limit: Limit = 20,
    cursor: ActivityCursor = None,
    q: Search = None,
) -> ThreadPage:
    """The caller's threads, most recently active first; ``q`` searches titles and messages."""
    page = await services.chat.list_threads(
        principal.user_id, limit=limit, cursor=cursor, search=q.strip() if q else None
    )
    return ThreadPage(items=[thread_out(t) for t in page.items], next_cursor=page.next_cursor)


@router.get("/threads/{thread_id}", responses=problems(401, 404, 503))
async def get_thread(thread_id: str, principal: PrincipalDep, services: ServicesDep) -> ThreadOut:
    """One of the caller's threads."""
    return thread_out(await services.chat.thread(principal.user_id, thread_id))


@router.patch("/threads/{thread_id}", responses=problems(401, 404, 413, 422, 503))
async def patch_thread(
    thread_id: str, body: ThreadPatch, principal: PrincipalDep, services: ServicesDep
) -> ThreadOut:
    """Rename a thread or replace its metadata."""
    thread = await services.chat.update_thread(
        principal.user_id,
        thread_id,
        title=body.title,
        set_title="title" in body.model_fields_set,
        meta=body.metadata,
    )
    await services.notices.thread("thread_updated", thread)
    return thread_out(thread)


@router.delete("/threads/{thread_id}", status_code=204, responses=problems(401, 404, 503))
async def delete_thread(thread_id: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    """Delete a thread; every run of it has ended (queued ones included) before the 204."""
    await services.runs.delete_thread(principal.user_id, thread_id)
    await services.notices.thread_deleted(principal.user_id, thread_id)
    return Response(status_code=204)


@router.get("/threads/{thread_id}/messages", responses=problems(401, 404, 422, 503))
async def list_messages(
    thread_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    order: Annotated[
        Literal["asc", "desc"],
        Query(description="`asc`: oldest first; `desc`: newest first (page back from the end)"),
    ] = "asc",
) -> MessagePage:
    """The thread's messages, oldest first (or newest first), with the caller's feedback."""
    page = await services.chat.list_messages(
        principal.user_id, thread_id, limit=limit, cursor=cursor, newest_first=order == "desc"
    )
    answers = [m.id for m in page.items if m.role == "assistant"]
    feedback = await services.chat.feedback_of(principal.user_id, answers)
    return MessagePage(
        items=[message_out(m, feedback.get(m.id)) for m in page.items],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/threads/{thread_id}/events",
    response_model=RunEventsOut,
    responses=problems(401, 404, 422, 503),
)
async def thread_events(
    thread_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    runs: Annotated[
        str, Query(pattern=RUN_IDS_PATTERN, description="Run ids of the thread, comma-separated")
    ],
    deltas: Annotated[
        bool, Query(description="Include `message_delta` events (the answer is in the messages)")
    ] = True,
) -> Response:
    """The logged events of several of the thread's runs in one answer (opening a thread
    with many runs is one request, not one per run). Runs not in the thread are left out."""
    await services.chat.thread(principal.user_id, thread_id)
    wanted = list(dict.fromkeys(runs.split(",")))
    mine = await services.chat.runs_of_thread(thread_id, wanted)
    skip = frozenset() if deltas else frozenset({"message_delta"})
    found = await services.event_log.read_runs(mine, user_id=principal.user_id, skip_types=skip)
    # The stored envelopes are JSON already: joined, not parsed and dumped again.
    parts = (
        orjson.dumps(run_id) + b":[" + b",".join(events) + b"]" for run_id, events in found.items()
    )
    return Response(b'{"runs":{' + b",".join(parts) + b"}}", media_type="application/json")


@router.get(
    "/threads/{thread_id}/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The thread as Markdown (`format=markdown`) or JSON (`format=json`)",
            "content": {"text/markdown": {}, "application/json": {}},
        },
        **problems(401, 404, 422, 503),
    },
)
async def export_thread(
    thread_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    format: Annotated[Literal["markdown", "json"], Query()] = "markdown",
) -> StreamingResponse:
    """Download the whole thread (every message, oldest first)."""
    thread = await services.chat.thread(principal.user_id, thread_id)
    chunks = services.chat.all_messages(principal.user_id, thread_id)
    body = export_markdown(thread, chunks) if format == "markdown" else export_json(thread, chunks)
    extension, media = (
        ("md", "text/markdown") if format == "markdown" else ("json", "application/json")
    )
    return StreamingResponse(
        body,
        media_type=f"{media}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{thread.id}.{extension}"'},
    )


async def export_markdown(
    thread: Thread, chunks: AsyncIterator[list[Message]]
) -> AsyncIterator[bytes]:
    """The thread as Markdown: a heading, then each message under its author."""
    title = (thread.title or "Untitled thread").replace("\n", " ")
    exported = datetime.now(UTC).isoformat(timespec="seconds")
    yield f"# {title}\n\n_Thread {thread.id}, exported {exported}_\n".encode()
    async for messages in chunks:
        out = []
        for message in messages:
            who = "You" if message.role == "user" else "Assistant"
            stamp = message.created_at.isoformat(timespec="seconds")
            out.append(f"\n## {who} · {stamp}\n\n{message.content}\n")
        yield "".join(out).encode()


async def export_json(thread: Thread, chunks: AsyncIterator[list[Message]]) -> AsyncIterator[bytes]:
    """The thread as one JSON document: ``{"thread": …, "messages": […]}``."""
    yield b'{"thread":' + thread_out(thread).model_dump_json().encode() + b',"messages":['
    first = True
    async for messages in chunks:
        for message in messages:
            yield (b"" if first else b",") + message_out(message).model_dump_json().encode()
            first = False
    yield b"]}"


@router.put("/messages/{message_id}/feedback", responses=problems(401, 404, 413, 422, 503))
async def rate_answer(
    message_id: str, body: FeedbackBody, principal: PrincipalDep, services: ServicesDep
) -> FeedbackOut:
    """Rate one of the caller's answers (an agent's message): up or down, with a comment."""
    comment = body.comment.strip() if body.comment else None
    feedback = await services.chat.rate(
        principal.user_id, message_id, rating=body.rating, comment=comment or None
    )
    return feedback_out(feedback)


@router.get("/messages/{message_id}/feedback", responses=problems(401, 404, 503))
async def get_feedback(
    message_id: str, principal: PrincipalDep, services: ServicesDep
) -> FeedbackOut:
    """The caller's feedback on an answer (404 when there is none)."""
    return feedback_out(await services.chat.feedback(principal.user_id, message_id))


@router.delete(
    "/messages/{message_id}/feedback", status_code=204, responses=problems(401, 404, 503)
)
async def delete_feedback(
    message_id: str, principal: PrincipalDep, services: ServicesDep
) -> Response:
    """Take back the caller's feedback on an answer."""
    await services.chat.unrate(principal.user_id, message_id)
    return Response(status_code=204)


@router.get("/feedback", responses=problems(401, 422, 503))
async def list_feedback(
    principal: PrincipalDep, services: ServicesDep, limit: Limit = 50, cursor: Cursor = None
) -> FeedbackPage:
    """Every piece of feedback the caller gave, newest first."""
    page = await services.chat.list_feedback(principal.user_id, limit=limit, cursor=cursor)
    return FeedbackPage(items=[feedback_out(f) for f in page.items], next_cursor=page.next_cursor)
