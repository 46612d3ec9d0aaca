"""``/threads`` and their messages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import Field

from atoll.server.deps import PrincipalDep, ServicesDep
from atoll.server.problems import problems
from atoll.server.schemas import (
    INTEGER_TEXT,
    MessageOut,
    MessagePage,
    ThreadCreate,
    ThreadOut,
    ThreadPage,
    ThreadPatch,
)
from atoll.store.bounds import CURSOR_PATTERN, UnstorableError, check_metadata
from atoll.store.models import Message, Thread

router = APIRouter(tags=["threads"])

Limit = Annotated[int, Field(ge=1, le=100), INTEGER_TEXT, Query()]
Cursor = Annotated[
    str | None,
    Query(pattern=CURSOR_PATTERN, description="The next_cursor of the previous page"),
]


def thread_out(thread: Thread) -> ThreadOut:
    """The public view of a thread.

    Metadata stored before it was checked (by an older version) and that cannot be
    sent back is left out and named, so the listing still works and the user can
    find the thread and replace (PATCH) or delete it.
    """
    metadata = thread.meta or {}
    problem = None
    try:
        check_metadata(metadata)
    except UnstorableError as exc:
        metadata, problem = {}, f"the stored metadata cannot be shown ({exc}); replace it"
    return ThreadOut(
        id=thread.id,
        title=thread.title,
        metadata=metadata,
        metadata_error=problem,
        created_at=thread.created_at,
        updated_at=thread.updated_at,
    )


def message_out(message: Message) -> MessageOut:
    """The public view of a message."""
    return MessageOut(
        id=message.id,
        thread_id=message.thread_id,
        role=message.role,
        content=message.content,
        run_id=message.run_id,
        created_at=message.created_at,
    )


@router.post("/threads", status_code=201, responses=problems(401, 413, 422, 503))
async def create_thread(
    principal: PrincipalDep, services: ServicesDep, body: ThreadCreate | None = None
) -> ThreadOut:
    """Start a new, empty thread."""
    body = body or ThreadCreate()
    thread = await services.chat.create_thread(
        principal.user_id, title=body.title, meta=body.metadata or {}
    )
    return thread_out(thread)


@router.get("/threads", responses=problems(401, 422, 503))
async def list_threads(
    principal: PrincipalDep, services: ServicesDep, limit: Limit = 20, cursor: Cursor = None
) -> ThreadPage:
    """The caller's threads, newest first."""
    page = await services.chat.list_threads(principal.user_id, limit=limit, cursor=cursor)
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
    return thread_out(thread)


@router.delete("/threads/{thread_id}", status_code=204, responses=problems(401, 404, 503))
async def delete_thread(thread_id: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    """Delete a thread; its alive runs are cancelled first."""
    alive = await services.chat.alive_run_ids(principal.user_id, thread_id)
    await services.runs.cancel_thread_runs(principal.user_id, alive)
    await services.chat.delete_thread(principal.user_id, thread_id)
    return Response(status_code=204)


@router.get("/threads/{thread_id}/messages", responses=problems(401, 404, 422, 503))
async def list_messages(
    thread_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> MessagePage:
    """The thread's messages, oldest first."""
    page = await services.chat.list_messages(
        principal.user_id, thread_id, limit=limit, cursor=cursor
    )
    return MessagePage(items=[message_out(m) for m in page.items], next_cursor=page.next_cursor)
