"""``assistant``: a language model with a tool-calling loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import orjson

from atoll.errors import LLMError
from atoll.runtime.agents.base import Agent, AgentRunContext
from atoll.runtime.llm.base import (
    ChatMessage,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

ASSISTANT_PROMPT = (
    "You are Atoll's assistant. Answer the user's question. Use the tools when they help: "
    "the calculator for any arithmetic, current_time for the date or time, knowledge_search "
    "for questions about Atoll or the operator's documents. Be concise."
)


async def stream_step(
    run: AgentRunContext,
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolSpec],
    *,
    tool_choice: ToolChoice | None = None,
    stream_text: bool = True,
) -> tuple[str, list[ToolCall]]:
    """One model call: streams text as deltas, shows reasoning as thinking, collects calls."""
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    async for chunk in run.llm.stream(messages, tools=tools, tool_choice=tool_choice):
        if isinstance(chunk, TextDelta):
            if reasoning:
                await run.thinking("".join(reasoning))
                reasoning.clear()
            text.append(chunk.text)
            if stream_text:
                await run.delta(chunk.text)
        elif isinstance(chunk, ReasoningDelta):
            reasoning.append(chunk.text)
        elif isinstance(chunk, ToolCall):
            calls.append(chunk)
    if reasoning:
        await run.thinking("".join(reasoning))
    return "".join(text), calls


def tool_message(call: ToolCall, content: str) -> ChatMessage:
    """The message that returns a tool call's result to the model."""
    return ChatMessage("tool", content, tool_call_id=call.id, name=call.name)


class AssistantAgent(Agent):
    """Answers with the LLM, calling tools in a loop until it can answer."""

    name = "assistant"
    description = (
        "General assistant that calls tools: arithmetic with the calculator, the current "
        "date and time, and search in Atoll's documentation and knowledge base."
    )
    max_steps: ClassVar[int] = 8

    async def run(self, run: AgentRunContext) -> str:
        """The tool-calling loop."""
        messages: list[ChatMessage] = [
            ChatMessage("system", ASSISTANT_PROMPT),
            *run.history,
            ChatMessage("user", run.input),
        ]
        specs = run.tools.specs()
        answer: list[str] = []
        for _ in range(self.max_steps):
            text, calls = await stream_step(run, messages, specs)
            answer.append(text)
            if not calls:
                return "".join(answer)
            messages.append(ChatMessage("assistant", text, tool_calls=tuple(calls)))
            for call in calls:
                result = await run.tools.call(call.name, call.arguments, call_id=call.id)
                messages.append(tool_message(call, orjson.dumps(result.for_model()).decode()))
        raise LLMError(f"the assistant did not finish within {self.max_steps} model calls")
