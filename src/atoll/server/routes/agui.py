"""AG-UI: ``POST /api/v1/agui`` takes a ``RunAgentInput`` and streams AG-UI events.

AG-UI front ends (CopilotKit and others, docs/integrations.md) send the whole
conversation and their own ``threadId``/``runId`` with every run. Each call is a
real Atoll run of the caller (stored, limited, isolated), read through the same
``follow_run`` as Atoll's own SSE, with its events mapped to AG-UI's (built with the
``ag-ui-protocol`` package's types):

================================  =================================================
Atoll                             AG-UI
================================  =================================================
the run is stored                 RUN_STARTED (the client's threadId and runId)
``agent_started``                 STEP_STARTED (``stepName``: the agent)
``agent_thinking``                REASONING_START, REASONING_MESSAGE_START/CONTENT/END,
                                  REASONING_END
``tool_executing``                TOOL_CALL_START, TOOL_CALL_ARGS, TOOL_CALL_END
``tool_completed``                TOOL_CALL_RESULT (so the client never runs it)
``message_delta`` (top level)     TEXT_MESSAGE_START (first), TEXT_MESSAGE_CONTENT
a sub-agent ends                  STEP_FINISHED
``agent_completed``               TEXT_MESSAGE_END, STEP_FINISHED, RUN_FINISHED
                                  (``usage``)
``agent_error``                   TEXT_MESSAGE_END, STEP_FINISHED, RUN_ERROR (``code``)
``agent_cancelled``               ... RUN_FINISHED with outcome ``cancelled``
================================  =================================================

Threads: a ``threadId`` that is one of the caller's Atoll threads (``thr_…``)
continues it; any other is the client's own name, remembered per user (a
``ThreadAlias``): its first run starts an Atoll thread holding the conversation
sent, later runs continue that thread with the last user message only. A client
that goes away cancels the run (``client_closed``): an AG-UI stream is not resumed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from functools import partial
from typing import Annotated, Any

import orjson
from ag_ui.core import (
    BaseEvent,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunStartedEvent,
    StepFinishedEvent,
    StepStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TokenUsage,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from atoll.runtime.events import EventType, RunEvent
from atoll.server.bodies import StrictJSONRoute
from atoll.server.conversations import split_conversation
from atoll.server.deps import PrincipalDep, ServicesDep
from atoll.server.problems import problems
from atoll.server.routes.runs import check_conversation_length
from atoll.server.sse import (
    SESSION_ENDED_DETAIL,
    SSE_MESSAGE,
    Progress,
    RunStreamResponse,
    Tick,
    follow_submission,
    unresumable_response,
)
from atoll.store.runs import Submission, Submitted

router = APIRouter(tags=["ag-ui"], route_class=StrictJSONRoute)

ALIAS_SOURCE = "agui"
MAX_ID = 200
MAX_EARLIER = 200
"""Messages a first run stores of the conversation sent (the newest); like the
OpenAI-compatible API's limit, which its schema states."""
THREAD_PREFIX = "thr_"
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "AG-UI events as Server-Sent Events (`data:` one event's JSON), from "
        "RUN_STARTED to RUN_FINISHED or RUN_ERROR (see docs/integrations.md)",
        "content": {"text/event-stream": {"schema": SSE_MESSAGE}},
    }
}


def encode(event: BaseEvent) -> bytes:
    """One AG-UI event as an SSE message (camelCase, absent fields left out)."""
    return b"data: " + event.model_dump_json(by_alias=True, exclude_none=True).encode() + b"\n\n"


def refusal(body: RunAgentInput, code: str, message: str) -> RunStreamResponse:
    """A stream that says why nothing was run: RUN_STARTED, then RUN_ERROR."""

    async def events() -> AsyncIterator[bytes]:
        yield encode(RunStartedEvent(thread_id=body.thread_id, run_id=body.run_id))
        yield encode(RunErrorEvent(message=message, code=code))

    return RunStreamResponse(events(), release=lambda: None)


@router.post(
    "/agui",
    response_class=StreamingResponse,
    responses={**STREAMED, **problems(401, 403, 404, 409, 413, 422, 429, 503)},
)
async def agui(
    body: RunAgentInput,
    principal: PrincipalDep,
    services: ServicesDep,
    agent: Annotated[
        str | None, Query(max_length=100, description="The agent (default: the plan's)")
    ] = None,
) -> RunStreamResponse:
    """Run an agent on an AG-UI ``RunAgentInput``; stream AG-UI events."""
    if agent is not None:  # an unknown or forbidden agent is an HTTP error, before anything
        services.registry.agent(agent)
        services.plans.get(principal.plan).check_agent(agent)
    if len(body.thread_id) > MAX_ID or len(body.run_id) > MAX_ID:
        return refusal(body, "validation_error", f"threadId and runId are at most {MAX_ID} long")
    content, earlier = split_conversation(
        (str(m.role), getattr(m, "content", None)) for m in body.messages
    )
    if not content:
        return refusal(body, "validation_error", "the messages have no user message with text")
    earlier = earlier[-MAX_EARLIER:]  # what a first run stores of a long conversation
    check_conversation_length(services, content, earlier)
    own_thread = body.thread_id.startswith(THREAD_PREFIX)
    submission = Submission(
        content=content,
        thread_id=body.thread_id if own_thread else None,
        agent=agent,
        multitask="enqueue",
        metadata={"via": "agui", "agui_run_id": body.run_id},
        earlier=() if own_thread else earlier,
        alias=None if own_thread else (ALIAS_SOURCE, body.thread_id),
    )
    submit = partial(services.runs.submit, principal, submission)
    submitted, events = await follow_submission(services, principal, submit)
    return unresumable_response(
        services, principal, submitted, partial(agui_events, body, submitted, events)
    )


class Mapper:
    """Turns one run's Atoll events into AG-UI events (it remembers the open message)."""

    def __init__(self, body: RunAgentInput, submitted: Submitted) -> None:
        self.thread_id = body.thread_id
        self.run_id = body.run_id
        self.model = submitted.run.agent
        self.message_id: str | None = None

    def map(self, event: RunEvent) -> list[BaseEvent]:
        """The AG-UI events for ``event``."""
        data = event.data
        kind = event.type
        if kind is EventType.AGENT_STARTED:
            return [StepStartedEvent(step_name=event.agent)]
        if kind is EventType.AGENT_THINKING:
            block = f"{event.run_id}-thinking-{event.seq}"
            return [
                ReasoningStartEvent(message_id=block),
                ReasoningMessageStartEvent(message_id=block, role="reasoning"),
                ReasoningMessageContentEvent(message_id=block, delta=str(data.get("text") or " ")),
                ReasoningMessageEndEvent(message_id=block),
                ReasoningEndEvent(message_id=block),
            ]
        if kind is EventType.TOOL_EXECUTING:
            call = str(data.get("call_id"))
            return [
                ToolCallStartEvent(
                    tool_call_id=call,
                    tool_call_name=str(data.get("tool")),
                    parent_message_id=self.message_id,
                ),
                ToolCallArgsEvent(tool_call_id=call, delta=orjson.dumps(data.get("args")).decode()),
                ToolCallEndEvent(tool_call_id=call),
            ]
        if kind is EventType.TOOL_COMPLETED:
            outcome = (
                {"ok": True, "result": data.get("result")}
                if data.get("ok")
                else {"ok": False, "error": data.get("error")}
            )
            return [
                ToolCallResultEvent(
                    message_id=f"{data.get('call_id')}-result",
                    tool_call_id=str(data.get("call_id")),
                    content=orjson.dumps(outcome).decode(),
                    role="tool",
                )
            ]
        if kind is EventType.MESSAGE_DELTA:
            if event.parent_agent is not None or not data.get("delta"):
                return []
            out: list[BaseEvent] = []
            if self.message_id is None:
                self.message_id = str(data.get("message_id"))
                out.append(TextMessageStartEvent(message_id=self.message_id, role="assistant"))
            out.append(TextMessageContentEvent(message_id=self.message_id, delta=data["delta"]))
            return out
        if not event.ends_run:  # a sub-agent's end
            return [StepFinishedEvent(step_name=event.agent)]
        return [*self.close(event.agent), self.ending(event)]

    def close(self, agent: str) -> list[BaseEvent]:
        """End the open text message, then the top-level agent's step."""
        out: list[BaseEvent] = []
        if self.message_id is not None:
            out.append(TextMessageEndEvent(message_id=self.message_id))
            self.message_id = None
        out.append(StepFinishedEvent(step_name=agent))
        return out

    def ending(self, event: RunEvent) -> BaseEvent:
        """RUN_FINISHED or RUN_ERROR for the run's terminal event."""
        usage = event.data.get("usage") or {}
        tokens = TokenUsage(
            model=self.model,
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
            total_tokens=int(usage.get("prompt_tokens", 0))
            + int(usage.get("completion_tokens", 0)),
        )
        if event.type is EventType.AGENT_COMPLETED:
            return RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id, usage=[tokens])
        if event.type is EventType.AGENT_CANCELLED:
            return RunFinishedEvent(
                thread_id=self.thread_id,
                run_id=self.run_id,
                outcome=RunFinishedCancelledOutcome(),
            )
        return RunErrorEvent(
            message=str(event.data.get("message") or "the agent failed"),
            code=str(event.data.get("code") or "agent_error"),
        )


async def agui_events(
    body: RunAgentInput,
    submitted: Submitted,
    events: AsyncGenerator[list[RunEvent] | Tick],
    progress: Progress,
) -> AsyncIterator[bytes]:
    """RUN_STARTED, then the run's events mapped, until RUN_FINISHED or RUN_ERROR."""
    started = RunStartedEvent(
        thread_id=body.thread_id,
        run_id=body.run_id,
        timestamp=int(time.time() * 1000),
        metadata={"atoll": {"thread_id": submitted.thread.id, "run_id": submitted.run.id}},
    )
    yield encode(started)
    mapper = Mapper(body, submitted)
    async with contextlib.aclosing(events):
        async for item in events:
            if item is Tick.KEEPALIVE:
                yield b": keep-alive\n\n"
                continue
            if item is Tick.CLOSING:
                yield encode(
                    RunErrorEvent(message="the server is shutting down", code="unavailable")
                )
                return
            if item is Tick.SESSION_ENDED:
                yield encode(RunErrorEvent(message=SESSION_ENDED_DETAIL, code="session_revoked"))
                return
            assert not isinstance(item, Tick)
            out = bytearray()
            for event in item:
                out += b"".join(encode(mapped) for mapped in mapper.map(event))
                if event.ends_run:
                    progress.ended = True
            yield bytes(out)
