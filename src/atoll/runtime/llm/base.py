"""The streaming LLM interface every provider implements.

A provider is built once per process (it may own a connection pool); it hands
out a fresh ``LLMClient`` per run, bound to that run's user context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from atoll.errors import ToolValidationError
from atoll.runtime.context import UserExecutionContext

Role = Literal["system", "user", "assistant", "tool"]
ToolChoice = Literal["auto", "none", "required"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's request to call a tool; ``arguments`` is the raw JSON text."""

    id: str
    name: str
    arguments: str

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; ``ToolValidationError`` when not a JSON object."""
        try:
            value = orjson.loads(self.arguments or "{}")
        except orjson.JSONDecodeError as exc:
            raise ToolValidationError(f"tool arguments are not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ToolValidationError("tool arguments must be a JSON object")
        return value


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a conversation sent to a model."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call: name, description and JSON-Schema parameters."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer text."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of the model's visible reasoning (shown as ``agent_thinking``)."""

    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported by the provider for one call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


LLMChunk = TextDelta | ReasoningDelta | ToolCall | Usage


class LLMClient(Protocol):
    """A per-run client: streams one completion at a time."""

    model: str

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice | None = None,
    ) -> AsyncIterator[LLMChunk]:
        """Stream text, reasoning, complete tool calls and usage for one completion."""


class LLMProvider(Protocol):
    """Builds per-run clients; owns whatever is shared (a connection pool)."""

    name: str

    def client(self, context: UserExecutionContext) -> LLMClient:
        """A fresh client for one run (or sub-agent) of ``context``'s user."""

    async def aclose(self) -> None:
        """Release shared resources."""
