"""A small OpenAI-compatible chat-completions server for tests (Starlette on loopback).

It streams like the real API (SSE ``data:`` chunks, ``[DONE]``): text deltas,
``reasoning_content``, tool calls whose arguments arrive in pieces, and a usage
chunk. What it answers depends on the conversation, so tests can drive every path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "sk-test-key-not-secret"


@dataclass
class FakeOpenAI:
    """Records requests; ``disconnected`` is set when a client abandons a slow stream."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    slow_chunks_sent: int = 0
    base_url: str = ""
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    """A question with "gate" streams one word, then waits for this before it ends."""

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        body = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body)}\n\n"

    def usage(self) -> str:
        body = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "fake-model",
            "choices": [],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }
        return f"data: {json.dumps(body)}\n\n"

    async def completions(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        body = await request.json()
        self.requests.append(body)
        messages = body["messages"]
        last = messages[-1]
        question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        if "server error" in question:
            return JSONResponse({"error": {"message": "internal"}}, status_code=500)
        if last["role"] == "tool" and question.startswith("call:"):
            return self.stream(self.verbatim(f"Tool said: {last['content']}"))
        if question.startswith("call:") and body.get("tools"):  # "call: NAME {json args}"
            name, _, arguments = question.removeprefix("call:").strip().partition(" ")
            return self.stream(self.named_call(name, arguments or "{}"))
        if last["role"] == "tool":
            value = json.loads(last["content"])["result"]["value"]
            return self.stream(self.text(f"The result is {value}."))
        if question.startswith("say:"):  # the answer is exactly what follows
            return self.stream(self.verbatim(question.removeprefix("say:").strip()))
        if "slow" in question:
            return self.stream(self.slow())
        if "gate" in question:
            return self.stream(self.gated())
        if body.get("tools") and "calculate" in question:
            return self.stream(self.tool_call())
        return self.stream(self.text("Hello from the fake model."))

    def stream(self, chunks: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(chunks, media_type="text/event-stream")

    async def text(self, answer: str) -> AsyncIterator[str]:
        yield self.chunk({"role": "assistant", "content": ""})
        for word in answer.split(" "):
            yield self.chunk({"content": word + " " if not word.endswith(".") else word})
        yield self.chunk({}, finish="stop")
        yield self.usage()
        yield "data: [DONE]\n\n"

    async def verbatim(self, answer: str) -> AsyncIterator[str]:
        yield self.chunk({"role": "assistant", "content": ""})
        for start in range(0, len(answer), 7):
            yield self.chunk({"content": answer[start : start + 7]})
        yield self.chunk({}, finish="stop")
        yield self.usage()
        yield "data: [DONE]\n\n"

    async def gated(self) -> AsyncIterator[str]:
        yield self.chunk({"role": "assistant", "content": "Waiting "})
        await self.gate.wait()
        yield self.chunk({"content": "done."})
        yield self.chunk({}, finish="stop")
        yield self.usage()
        yield "data: [DONE]\n\n"

    async def tool_call(self) -> AsyncIterator[str]:
        yield self.chunk({"role": "assistant", "reasoning_content": "I should use "})
        yield self.chunk({"reasoning_content": "the calculator."})
        first = {
            "index": 0,
            "id": "call_fake1",
            "type": "function",
            "function": {"name": "calculator", "arguments": '{"expre'},
        }
        yield self.chunk({"tool_calls": [first]})
        yield self.chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ssion": "17'}}]})
        yield self.chunk({"tool_calls": [{"index": 0, "function": {"arguments": '*23"}'}}]})
        yield self.chunk({}, finish="tool_calls")
        yield self.usage()
        yield "data: [DONE]\n\n"

    async def named_call(self, name: str, arguments: str) -> AsyncIterator[str]:
        call = {"index": 0, "id": f"call_{name}", "type": "function",
                "function": {"name": name, "arguments": arguments}}  # fmt: skip
        yield self.chunk({"role": "assistant", "tool_calls": [call]})
        yield self.chunk({}, finish="tool_calls")
        yield self.usage()
        yield "data: [DONE]\n\n"

    async def slow(self) -> AsyncIterator[str]:
        try:
            yield self.chunk({"role": "assistant", "content": ""})
            for index in range(200):
                self.slow_chunks_sent += 1
                yield self.chunk({"content": f"word{index} "})
                await asyncio.sleep(0.05)
            yield "data: [DONE]\n\n"
        finally:
            self.disconnected.set()


@contextlib.asynccontextmanager
async def serve_fake_openai() -> AsyncIterator[FakeOpenAI]:
    """Run the fake server on a free loopback port for the duration of the block."""
    fake = FakeOpenAI()
    app = Starlette(routes=[Route("/v1/chat/completions", fake.completions, methods=["POST"])])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        fake.base_url = f"http://127.0.0.1:{port}/v1"
        yield fake
    finally:
        server.should_exit = True
        await task
