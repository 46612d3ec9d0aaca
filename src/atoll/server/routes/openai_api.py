"""The OpenAI-compatible API: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Any client of OpenAI's Chat Completions (the official SDKs, Open WebUI, LangChain …)
can talk to Atoll's agents: ``model`` names the agent, the API key (or an access
token) is the ``api_key``. Every call is a real Atoll run of the key's owner — stored
in a thread of theirs, limited by their plan, cancellable, isolated — read through
the same ``follow_run`` as Atoll's own SSE. What Atoll adds to OpenAI's shapes
(docs/integrations.md):

- ``Atoll-Thread-Id`` (request header) continues one of the caller's threads; the
  thread's own history is used and only the last (user) message is sent. Without it
  the conversation sent starts a new thread: its earlier user and assistant messages
  are stored there first. ``system``, ``developer`` and ``tool`` messages are not
  stored: an Atoll agent keeps its own instructions, and its tools run server-side.
- ``Atoll-Thread-Id`` and ``Atoll-Run-Id`` (response headers) name what the call made.
- Tool activity is never ``tool_calls`` (the client would try to run them): in a
  stream, each run event other than the answer's text rides on an empty-delta chunk
  as the extension field ``atoll`` (the event's envelope), and the agents' thinking
  is also ``delta.reasoning_content``; a non-streamed answer lists them in
  ``atoll.events``.
- A streamed call whose client goes away cancels its run (reason ``client_closed``):
  there is no resuming an OpenAI stream. A non-streamed call's run runs to its end.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from functools import partial
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pydantic.config import JsonDict

from atoll.errors import ValidationFailedError
from atoll.runtime.events import EventType, RunEvent
from atoll.server.bodies import StrictJSONRoute
from atoll.server.conversations import split_conversation
from atoll.server.deps import PrincipalDep, ServicesDep
from atoll.server.problems import openai_error_body, openai_errors
from atoll.server.routes.runs import check_conversation_length
from atoll.server.schemas import Body
from atoll.server.sse import (
    SESSION_ENDED_DETAIL,
    SSE_MESSAGE,
    THREAD_HEADER,
    Progress,
    RunStreamResponse,
    Tick,
    follow_submission,
    run_headers,
    unresumable_response,
)
from atoll.store.runs import Submission, Submitted

router = APIRouter(prefix="/v1", tags=["openai"], route_class=StrictJSONRoute)

MAX_MESSAGES = 200
"""Messages one call may send (each is stored when it starts a thread)."""


class TextPart(Body):
    """One part of a message's content: only ``text`` parts are understood (an image is
    a 422 ``validation_error``)."""

    type: Literal["text"]
    text: str = Field(min_length=1)


class UserMessage(Body):
    role: Literal["user"]
    content: Annotated[str, Field(min_length=1)] | Annotated[list[TextPart], Field(min_length=1)]
    name: str | None = Field(None, max_length=256)


class OtherMessage(Body):
    role: Literal["system", "developer", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=256)


ChatCompletionMessage = Annotated[UserMessage | OtherMessage, Field(discriminator="role")]
HAS_USER_MESSAGE: JsonDict = {
    "contains": {"type": "object", "properties": {"role": {"const": "user"}}}
}


class StreamOptions(Body):
    include_usage: bool = False


class ChatCompletionRequest(Body):
    """OpenAI's request; fields Atoll has no use for (temperature, tools …) are ignored."""

    model: str = Field(min_length=1, max_length=100, description="The agent to run")
    messages: list[ChatCompletionMessage] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description="The conversation; its last user message is the run's input",
        json_schema_extra=HAS_USER_MESSAGE,
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(
        None, max_length=256, description="Accepted and ignored: identity is the key's owner"
    )


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "atoll"
    description: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AtollExtension(BaseModel):
    run_id: str
    thread_id: str
    message_id: str | None
    events: list[dict[str, Any]]
    """The run's events other than the answer's text (tool calls, thinking, sub-agents)."""


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    atoll: AtollExtension


STREAMED = {
    "description": "With `stream: false`, the completion; with `stream: true`, Server-Sent "
    "Events: `chat.completion.chunk` objects, then `[DONE]` (see docs/integrations.md)",
    "content": {"text/event-stream": {"schema": SSE_MESSAGE}},
}


CUT_SHORT: dict[Tick, tuple[int, dict[str, Any]]] = {
    Tick.CLOSING: (503, openai_error_body(503, "unavailable", "the server is shutting down")),
    Tick.SESSION_ENDED: (401, openai_error_body(401, "session_revoked", SESSION_ENDED_DETAIL)),
}
"""How a completion ends when its run's follower stops before the run: the status and
error of a whole answer, or the error chunk (then ``[DONE]``) of a stream."""


def usage_of(data: dict[str, Any]) -> CompletionUsage:
    """OpenAI's usage from an ``agent_completed`` event's ``usage``."""
    usage = data.get("usage") or {}
    prompt = int(usage.get("prompt_tokens", 0))
    completion = int(usage.get("completion_tokens", 0))
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def conversation(body: ChatCompletionRequest) -> tuple[str, list[tuple[str, str]]]:
    """The new user message (the last one) and the messages to store before it."""
    content, earlier = split_conversation((str(m.role), m.content) for m in body.messages)
    if not content:  # the schema says so too (``contains``, and non-empty user content)
        raise ValidationFailedError(
            "the conversation has no user message",
            [{"loc": ["body", "messages"], "msg": "no message with role 'user'"}],
        )
    return content, earlier


def failure(event: RunEvent) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error body of a run that did not complete."""
    data = dict(event.data)
    if event.type is EventType.AGENT_CANCELLED:
        reason = str(data.get("reason", "cancelled"))
        body = openai_error_body(409, "run_cancelled", f"the run was cancelled ({reason})")
        return 409, body
    code = str(data.get("code", "agent_error"))
    status = 429 if code == "quota_exceeded" else 504 if data.get("state") == "timeout" else 500
    message = str(data.get("message") or "the agent failed")
    return status, openai_error_body(status, code, message, extensions={"run_id": event.run_id})


def chunk(submitted: Submitted, created: int, *, delta: dict[str, Any], **extra: Any) -> bytes:
    """One ``chat.completion.chunk`` as an SSE message."""
    body = {
        "id": f"chatcmpl-{submitted.run.id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": submitted.run.agent,
        "choices": [{"index": 0, "delta": delta, "finish_reason": extra.pop("finish", None)}],
        **extra,
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


@router.get("/models", responses=openai_errors(401, 403, 503))
async def list_models(principal: PrincipalDep, services: ServicesDep) -> ModelList:
    """The agents the caller's plan includes, as OpenAI models."""
    plan = services.plans.get(principal.plan)
    created = int(services.started_at)
    return ModelList(
        data=[
            ModelOut(id=agent["name"], created=created, description=agent["description"])
            for agent in services.registry.describe_agents()
            if plan.allows_agent(agent["name"])
        ]
    )


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={200: STREAMED, **openai_errors(401, 403, 404, 409, 413, 422, 429, 503)},
)
async def chat_completions(
    body: ChatCompletionRequest,
    principal: PrincipalDep,
    services: ServicesDep,
    thread_id: Annotated[
        str | None,
        Header(alias=THREAD_HEADER, max_length=64, description="Continue this thread of yours"),
    ] = None,
) -> JSONResponse | RunStreamResponse:
    """Run the agent ``model`` on the conversation; streamed with ``stream: true``."""
    content, earlier = conversation(body)
    check_conversation_length(services, content, earlier)
    submission = Submission(
        content=content,
        thread_id=thread_id,
        agent=body.model,
        multitask="enqueue",
        metadata={"via": "openai"},
        earlier=() if thread_id is not None else earlier,
    )
    submit = partial(services.runs.submit, principal, submission)
    submitted, events = await follow_submission(services, principal, submit)
    if not body.stream:
        try:
            return await complete(submitted, events, run_headers(submitted))
        finally:
            await events.aclose()
            services.streams.release(principal.user_id)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return unresumable_response(
        services,
        principal,
        submitted,
        partial(openai_chunks, submitted, events, include_usage=include_usage),
    )


async def complete(
    submitted: Submitted,
    events: AsyncIterator[list[RunEvent] | Tick],
    headers: dict[str, str],
) -> JSONResponse:
    """Wait for the run's end and answer with the whole completion."""
    others: list[dict[str, Any]] = []
    async for item in events:
        if isinstance(item, Tick) and item in CUT_SHORT:
            status, body = CUT_SHORT[item]
            return JSONResponse(body, status_code=status, headers=headers)
        if isinstance(item, Tick):
            continue
        for event in item:
            if event.type is EventType.MESSAGE_DELTA and event.parent_agent is None:
                continue
            if not event.ends_run:
                others.append(event.envelope())
                continue
            if event.type is not EventType.AGENT_COMPLETED:
                status, error = failure(event)
                return JSONResponse(error, status_code=status, headers=headers)
            message = dict(event.data.get("message") or {})
            completion = ChatCompletion(
                id=f"chatcmpl-{submitted.run.id}",
                created=int(submitted.run.created_at.timestamp()),
                model=submitted.run.agent,
                choices=[Choice(message=AssistantMessage(content=str(message.get("content", ""))))],
                usage=usage_of(dict(event.data)),
                atoll=AtollExtension(
                    run_id=submitted.run.id,
                    thread_id=submitted.thread.id,
                    message_id=message.get("id"),
                    events=others,
                ),
            )
            return JSONResponse(completion.model_dump(mode="json"), headers=headers)
    raise AssertionError("follow_run ends with the run's terminal event, or is cut short")


async def openai_chunks(
    submitted: Submitted,
    events: AsyncGenerator[list[RunEvent] | Tick],
    progress: Progress,
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The run as ``chat.completion.chunk`` SSE messages, then ``[DONE]``."""
    created = int(submitted.run.created_at.timestamp())
    yield chunk(submitted, created, delta={"role": "assistant", "content": ""})
    async with contextlib.aclosing(events):
        async for item in stream_items(submitted, created, events, progress, include_usage):
            yield item


async def stream_items(
    submitted: Submitted,
    created: int,
    events: AsyncIterator[list[RunEvent] | Tick],
    progress: Progress,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """``openai_chunks`` after its first chunk."""
    async for item in events:
        if item is Tick.KEEPALIVE:
            yield b": keep-alive\n\n"
            continue
        if isinstance(item, Tick) and item in CUT_SHORT:
            _, error = CUT_SHORT[item]
            yield b"data: " + orjson.dumps(error) + b"\n\ndata: [DONE]\n\n"
            return
        assert not isinstance(item, Tick)
        out = bytearray()
        for event in item:
            if event.type is EventType.MESSAGE_DELTA and event.parent_agent is None:
                out += chunk(submitted, created, delta={"content": event.data.get("delta", "")})
            elif not event.ends_run:
                delta: dict[str, Any] = {}
                if event.type is EventType.AGENT_THINKING:
                    delta["reasoning_content"] = str(event.data.get("text", "")) + "\n"
                out += chunk(submitted, created, delta=delta, atoll=event.envelope())
            else:
                progress.ended = True
                if event.type is EventType.AGENT_COMPLETED:
                    out += chunk(submitted, created, delta={}, finish="stop")
                    if include_usage:
                        usage = usage_of(dict(event.data)).model_dump()
                        body = {
                            "id": f"chatcmpl-{submitted.run.id}",
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": submitted.run.agent,
                            "choices": [],
                            "usage": usage,
                        }
                        out += b"data: " + orjson.dumps(body) + b"\n\n"
                else:
                    out += b"data: " + orjson.dumps(failure(event)[1]) + b"\n\n"
                out += b"data: [DONE]\n\n"
        yield bytes(out)
