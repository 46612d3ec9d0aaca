"""The ``openai`` provider against a real OpenAI-compatible HTTP server on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from atoll.config import Settings
from atoll.errors import ConfigurationError
from atoll.runtime.engine import RunRequest
from atoll.runtime.events import EventType
from atoll.runtime.ids import new_id
from atoll.runtime.llm.openai_compat import OpenAIProvider
from atoll.runtime.llm.providers import build_llm_provider
from atoll.runtime.state import ExecutionState

from fake_openai import API_KEY, serve_fake_openai
from support import Runtime, is_subsequence, make_context, types_of, until

pytestmark = pytest.mark.integration


def provider(base_url: str, **kwargs: object) -> OpenAIProvider:
    return OpenAIProvider(
        model="fake-model", base_url=base_url, api_key=API_KEY, max_retries=0, **kwargs
    )  # type: ignore[arg-type]


async def test_streams_text_reasoning_and_tool_calls(
    build_runtime: Callable[..., Runtime],
) -> None:
    async with serve_fake_openai() as fake:
        llm = provider(fake.base_url)
        rt = build_runtime(llm=llm)
        async with rt.factory:
            outcome, events = await rt.run("please calculate 17*23", agent="assistant")
        await llm.aclose()
    assert outcome.state is ExecutionState.COMPLETED, outcome
    assert outcome.content == "The result is 391."
    kinds = types_of(events)
    assert is_subsequence(
        ["agent_started", "agent_thinking", "tool_executing", "tool_completed",
         "message_delta", "agent_completed"], kinds,
    )  # fmt: skip
    thinking = next(e for e in events if e.type is EventType.AGENT_THINKING)
    assert thinking.data["text"] == "I should use the calculator."
    executing = next(e for e in events if e.type is EventType.TOOL_EXECUTING)
    assert executing.data["call_id"] == "call_fake1"
    assert executing.data["args"] == {"expression": "17*23"}
    completed = next(e for e in events if e.type is EventType.TOOL_COMPLETED)
    assert completed.data["result"] == {"expression": "17*23", "value": 391}
    assert events[-1].data["usage"] == {"prompt_tokens": 22, "completion_tokens": 14}
    # The second request carries the tool call and its result back to the model.
    first, second = fake.requests
    assert first["model"] == "fake-model"
    assert first["stream"] is True
    assert first["stream_options"] == {"include_usage": True}
    assert {t["function"]["name"] for t in first["tools"]} == {
        "calculator", "current_time", "knowledge_search",
    }  # fmt: skip
    assert first["user"] not in {m.get("content") for m in first["messages"]}
    assert second["messages"][-2]["tool_calls"][0]["id"] == "call_fake1"
    assert second["messages"][-1]["role"] == "tool"
    assert second["messages"][-1]["tool_call_id"] == "call_fake1"


async def test_user_is_sent_as_a_stable_opaque_tag() -> None:
    llm = provider("http://127.0.0.1:9/v1")
    a, b = make_context(), make_context()
    tag_a = llm.client(a)._user_tag
    assert tag_a == llm.client(make_context(user_id=a.user_id))._user_tag
    assert tag_a != llm.client(b)._user_tag
    assert a.user_id not in tag_a
    await llm.aclose()


async def test_cancel_mid_stream_closes_the_http_stream(
    build_runtime: Callable[..., Runtime],
) -> None:
    async with serve_fake_openai() as fake:
        llm = provider(fake.base_url)
        rt = build_runtime(llm=llm)
        async with rt.factory:
            context = make_context()
            async with rt.factory.user_execution_scope(context) as engine:
                task = asyncio.create_task(
                    engine.run(RunRequest("assistant", "a slow answer please", new_id("msg")))
                )
                await until(lambda: fake.slow_chunks_sent >= 3, what="streaming")
                engine.cancel("user")
                outcome = await asyncio.wait_for(task, 5)
            await asyncio.wait_for(fake.disconnected.wait(), 5)
            sent_at_cancel = fake.slow_chunks_sent
            await asyncio.sleep(0.2)
            events = await rt.log.read(context.run_id, user_id=context.user_id)
        await llm.aclose()
    assert outcome.state is ExecutionState.CANCELLED
    assert events[-1].type is EventType.AGENT_CANCELLED
    assert fake.slow_chunks_sent == sent_at_cancel < 200  # the server stopped streaming
    assert any(e.type is EventType.MESSAGE_DELTA for e in events)


async def test_http_error_becomes_agent_error(build_runtime: Callable[..., Runtime]) -> None:
    async with serve_fake_openai() as fake:
        llm = provider(fake.base_url)
        rt = build_runtime(llm=llm)
        async with rt.factory:
            outcome, events = await rt.run("server error now")
        await llm.aclose()
    assert outcome.state is ExecutionState.FAILED
    assert events[-1].data["code"] == "llm_error"
    assert "HTTP 500" in events[-1].data["message"]
    assert API_KEY not in events[-1].payload.decode()


async def test_unreachable_endpoint_becomes_agent_error(
    build_runtime: Callable[..., Runtime],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    llm = provider(f"http://127.0.0.1:{port}/v1", timeout=2.0)
    rt = build_runtime(llm=llm)
    async with rt.factory:
        outcome, events = await rt.run("hello")
    await llm.aclose()
    assert outcome.state is ExecutionState.FAILED
    assert events[-1].data == {
        "state": "failed", "code": "llm_error",
        "message": "the language model endpoint could not be reached",
    }  # fmt: skip


def test_provider_built_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_llm_provider(Settings()).name == "offline"
    monkeypatch.setenv("ATOLL_LLM_PROVIDER", "openai")
    with pytest.raises(ConfigurationError, match="ATOLL_LLM_MODEL"):
        build_llm_provider(Settings())
    monkeypatch.setenv("ATOLL_LLM_MODEL", "m")
    monkeypatch.setenv("ATOLL_LLM_BASE_URL", "http://127.0.0.1:1/v1")
    built = build_llm_provider(Settings())
    assert isinstance(built, OpenAIProvider)
    assert built.base_url == "http://127.0.0.1:1/v1"
