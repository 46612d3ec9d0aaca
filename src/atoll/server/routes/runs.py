"""Runs: start (per thread or through ``/chat``), read, events, stream, cancel; agents, tools."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from atoll.auth.principal import Principal
from atoll.errors import ValidationFailedError
from atoll.runtime.context import UserExecutionContext
from atoll.runtime.events import EventType
from atoll.runtime.ids import new_id
from atoll.server.bodies import StrictJSONRoute
from atoll.server.deps import PrincipalDep, ServicesDep
from atoll.server.problems import problems
from atoll.server.schemas import (
    INTEGER_TEXT,
    AgentOut,
    ChatAccepted,
    ChatBody,
    EventPage,
    RunAccepted,
    RunCreate,
    RunOut,
    ToolOut,
    message_out,
)
from atoll.server.services import Services
from atoll.server.sse import (
    RunStreamResponse,
    accepts_event_stream,
    run_stream,
    sse_preface,
    watched_submit,
)
from atoll.store.bounds import MAX_SEQ, SEQ_PATTERN
from atoll.store.runs import Submission, Submitted

router = APIRouter(tags=["runs"], route_class=StrictJSONRoute)
Accepted = TypeVar("Accepted", bound=RunAccepted)
SSE_EVENT = {
    "type": "object",
    "description": "One Server-Sent Event; `data` is the run event's envelope as JSON",
    "properties": {
        "id": {"type": "string", "pattern": SEQ_PATTERN},
        "event": {"type": "string", "enum": [t.value for t in EventType]},
        "data": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
    "required": ["data"],
}


def check_message_length(services: Services, message: str) -> None:
    """``validation_error`` naming ``message`` when it is longer than allowed."""
    limit = services.settings.max_message_chars
    if len(message) > limit:
        raise ValidationFailedError(
            "message too long",
            [{"loc": ["body", "message"], "msg": f"at most {limit} characters"}],
        )


def check_conversation_length(
    services: Services, content: str, earlier: Sequence[tuple[str, str]]
) -> None:
    """``check_message_length`` for the new message and each stored before it."""
    check_message_length(services, content)
    for _, text in earlier:
        check_message_length(services, text)


STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "With `Accept: text/event-stream`: the run's events as Server-Sent Events "
        "in this response, after an `ack` event whose data is the 202 body (see "
        "docs/protocol.md)",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    }
}


async def submit_and_answer(
    services: Services,
    principal: Principal,
    request: Request,
    *,
    body: RunCreate,
    thread_id: str | None,
    accepted: Callable[[Submitted], Accepted],
) -> Accepted | StreamingResponse:
    """Submit the message; answer 202 with ``accepted(...)``, or stream the run's events.

    Streaming (``Accept: text/event-stream``) goes through ``watched_submit``.
    """
    check_message_length(services, body.message)
    submission = Submission(
        content=body.message,
        thread_id=thread_id,
        agent=body.agent,
        multitask=body.multitask,
        metadata=body.metadata,
    )
    submit = partial(services.runs.submit, principal, submission)
    if not accepts_event_stream(request.headers.get("accept")):
        return accepted(await submit())
    user_id = principal.user_id
    submitted, subscription = await watched_submit(services, principal, submit)
    ack = sse_preface("ack", accepted(submitted).model_dump_json().encode())
    events = run_stream(
        services,
        run_id=submitted.run.id,
        principal=principal,
        after=0,
        subscription=subscription,
        preface=ack,
    )
    return RunStreamResponse(events, release=lambda: services.streams.release(user_id))


@router.post(
    "/threads/{thread_id}/runs",
    status_code=202,
    response_model=RunAccepted,
    responses={**STREAMED, **problems(401, 404, 409, 413, 422, 429, 503)},
)
async def start_run(
    thread_id: str,
    body: RunCreate,
    principal: PrincipalDep,
    services: ServicesDep,
    request: Request,
) -> RunAccepted | StreamingResponse:
    """Store the message and start a run on the thread; streamed with Accept: text/event-stream."""

    def accepted(submitted: Submitted) -> RunAccepted:
        return RunAccepted(
            run=RunOut(**services.runs.live_state(submitted.run)),
            message=message_out(submitted.message),
        )

    return await submit_and_answer(
        services, principal, request, body=body, thread_id=thread_id, accepted=accepted
    )


@router.post(
    "/chat",
    status_code=202,
    response_model=ChatAccepted,
    responses={**STREAMED, **problems(401, 404, 409, 413, 422, 429, 503)},
)
async def chat(
    body: ChatBody, principal: PrincipalDep, services: ServicesDep, request: Request
) -> ChatAccepted | StreamingResponse:
    """Send a message (a new thread when none is named); streamed with Accept: text/event-stream."""

    def accepted(submitted: Submitted) -> ChatAccepted:
        return ChatAccepted(
            thread_id=submitted.thread.id,
            run=RunOut(**services.runs.live_state(submitted.run)),
            message=message_out(submitted.message),
        )

    return await submit_and_answer(
        services, principal, request, body=body, thread_id=body.thread_id, accepted=accepted
    )


@router.get("/runs/{run_id}", responses=problems(401, 404, 503))
async def get_run(run_id: str, principal: PrincipalDep, services: ServicesDep) -> RunOut:
    """One of the caller's runs."""
    run = await services.chat.run(principal.user_id, run_id)
    return RunOut(**services.runs.live_state(run))


@router.get("/runs/{run_id}/events", responses=problems(401, 404, 422, 503))
async def run_events(
    run_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    after: Annotated[int, Field(ge=0, le=MAX_SEQ), INTEGER_TEXT, Query()] = 0,
) -> EventPage:
    """The run's logged events with ``seq > after``."""
    await services.chat.run(principal.user_id, run_id)
    events = await services.event_log.read(run_id, user_id=principal.user_id, after=after)
    return EventPage(
        items=[e.envelope() for e in events], next_after=events[-1].seq if events else after
    )


@router.get(
    "/runs/{run_id}/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events: `id:` is the event's seq, `data:` its envelope",
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
        },
        **problems(401, 404, 422, 429, 503),
    },
)
async def stream_run(
    run_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    last_event_id: Annotated[
        str | None, Header(pattern=SEQ_PATTERN, description="Resume after this seq")
    ] = None,
) -> StreamingResponse:
    """Server-Sent Events of the run; honours ``Last-Event-ID``; ends after the terminal event."""
    await services.chat.run(principal.user_id, run_id)
    after = int(last_event_id) if last_event_id is not None else 0
    user_id = principal.user_id
    services.streams.acquire(user_id)
    return RunStreamResponse(
        run_stream(services, run_id=run_id, principal=principal, after=after),
        release=lambda: services.streams.release(user_id),
    )


@router.post("/runs/{run_id}/cancel", status_code=202, responses=problems(401, 404, 503))
async def cancel_run(run_id: str, principal: PrincipalDep, services: ServicesDep) -> RunOut:
    """Cancel the run; idempotent, and not an error for a finished run."""
    run = await services.runs.cancel(principal, run_id)
    return RunOut(**services.runs.live_state(run))


@router.get("/agents", responses=problems(401, 503))
async def list_agents(principal: PrincipalDep, services: ServicesDep) -> list[AgentOut]:
    """The agents the caller's plan includes."""
    plan = services.plans.get(principal.plan)
    return [
        AgentOut(**agent)
        for agent in services.registry.describe_agents()
        if plan.allows_agent(agent["name"])
    ]


@router.get("/tools", responses=problems(401, 503))
async def list_tools(principal: PrincipalDep, services: ServicesDep) -> list[ToolOut]:
    """The tools the caller's plan and roles allow."""
    context = UserExecutionContext(
        user_id=principal.user_id,
        thread_id=new_id("thr"),
        run_id=new_id("run"),
        request_id=new_id("req"),
        plan=principal.plan,
        roles=principal.roles,
    )
    return [
        ToolOut(name=t.name, description=t.description, parameters=dict(t.parameters))
        for t in services.registry.tools.values()
        if t.allows(context, services.plans.get(principal.plan))
    ]
