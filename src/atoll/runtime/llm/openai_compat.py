"""The ``openai`` provider: any OpenAI-compatible chat-completions endpoint, streamed.

Works with OpenAI, vLLM, Ollama and the llama.cpp server through the official
``openai`` package. One ``AsyncOpenAI`` client (one connection pool) per
provider; a fresh ``OpenAIChatClient`` per run. Cancelling the run closes the
HTTP stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from atoll.errors import LLMError
from atoll.runtime.context import UserExecutionContext
from atoll.runtime.ids import new_id
from atoll.runtime.llm.base import (
    ChatMessage,
    LLMChunk,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)

if TYPE_CHECKING:
    from openai import AsyncOpenAI


def _wire_message(message: ChatMessage) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    if message.name is not None and message.role != "tool":
        wire["name"] = message.name
    return wire


def _wire_tool(spec: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": spec.name,
            "description": spec.description,
            "parameters": dict(spec.parameters),
        },
    }


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAIChatClient:
    """A per-run client that streams one chat completion at a time."""

    def __init__(
        self, client: AsyncOpenAI, *, model: str, user_tag: str, stream_usage: bool
    ) -> None:
        self._client = client
        self.model = model
        self._user_tag = user_tag
        self._stream_usage = stream_usage

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice | None = None,
    ) -> AsyncIterator[LLMChunk]:
        """Stream deltas, reasoning, complete tool calls and usage."""
        import openai

        request: dict[str, Any] = {
            "model": self.model,
            "messages": [_wire_message(m) for m in messages],
            "stream": True,
            "user": self._user_tag,
        }
        if self._stream_usage:
            request["stream_options"] = {"include_usage": True}
        if tools:
            request["tools"] = [_wire_tool(t) for t in tools]
            if tool_choice is not None:
                request["tool_choice"] = tool_choice
        partial: dict[int, _PartialCall] = {}
        try:
            stream = await self._client.chat.completions.create(**request)
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        yield Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    if not chunk.choices:
                        continue
                    delta = chunk.choices[0].delta
                    extra = delta.model_extra or {}
                    reasoning = extra.get("reasoning_content") or extra.get("reasoning")
                    if isinstance(reasoning, str) and reasoning:
                        yield ReasoningDelta(reasoning)
                    if delta.content:
                        yield TextDelta(delta.content)
                    for call in delta.tool_calls or ():
                        slot = partial.setdefault(call.index, _PartialCall())
                        if call.id:
                            slot.id = call.id
                        if call.function is not None:
                            if call.function.name:
                                slot.name += call.function.name
                            if call.function.arguments:
                                slot.arguments.append(call.function.arguments)
        except openai.APIStatusError as exc:
            raise LLMError(
                f"the language model endpoint answered HTTP {exc.status_code}",
                details={"provider": "openai", "status": exc.status_code},
            ) from None
        except openai.APITimeoutError:
            raise LLMError("the language model endpoint timed out") from None
        except openai.APIConnectionError:
            raise LLMError("the language model endpoint could not be reached") from None
        except openai.OpenAIError as exc:
            raise LLMError(f"the language model call failed: {type(exc).__name__}") from None
        for index in sorted(partial):
            slot = partial[index]
            if not slot.name:
                raise LLMError("the model sent a tool call without a function name")
            yield ToolCall(slot.id or new_id("call"), slot.name, "".join(slot.arguments) or "{}")


class OpenAIProvider:
    """Talks to an OpenAI-compatible endpoint given by base URL, key and model."""

    name = "openai"

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        stream_usage: bool = True,
    ) -> None:
        if not model:
            raise LLMError("the openai provider needs a model name (ATOLL_LLM_MODEL)")
        self.model = model
        self.base_url = base_url
        self._api_key = api_key
        self._timeout = timeout
        self._max_retries = max_retries
        self._stream_usage = stream_usage
        self._client: AsyncOpenAI | None = None

    def _shared_client(self) -> AsyncOpenAI:
        if self._client is None:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(
                base_url=self.base_url,
                # Local servers (vLLM, Ollama, llama.cpp) accept any key; the SDK requires one.
                api_key=self._api_key or "not-needed",
                timeout=self._timeout,
                max_retries=self._max_retries,
            )
        return self._client

    def client(self, context: UserExecutionContext) -> OpenAIChatClient:
        """A fresh per-run client; the user is passed on as a stable, non-reversible tag."""
        tag = hashlib.sha256(context.user_id.encode()).hexdigest()[:32]
        return OpenAIChatClient(
            self._shared_client(), model=self.model, user_tag=tag, stream_usage=self._stream_usage
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.close()
            self._client = None
