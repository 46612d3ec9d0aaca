"""The OpenAI-compatible API (issue 16), driven by the official ``openai`` client with an
Atoll API key against the app (in-process): every call is a real run of the key's owner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from atoll.client import AtollClient
from atoll.server.serve import running_server
from integration.fake_openai import API_KEY, FakeOpenAI, serve_fake_openai

from inprocess import InProcessApp, running_app
from serving import make_settings
from support import until

pytestmark = [pytest.mark.e2e, pytest.mark.inprocess]


async def key_of(client: AtollClient, **fields: Any) -> str:
    made = await client.request("POST", "/keys", json={"name": "program", **fields})
    return str(made["key"])


def sdk(app: InProcessApp | str, key: str) -> openai.AsyncOpenAI:
    """The SDK with ``key``, for the in-process app or a real server's URL."""
    if isinstance(app, str):
        return openai.AsyncOpenAI(base_url=f"{app}/v1", api_key=key, max_retries=0)
    return openai.AsyncOpenAI(
        base_url=f"{app.url}/v1", api_key=key, max_retries=0, http_client=app.http()
    )


async def thread_messages(client: AtollClient, thread_id: str) -> list[tuple[str, str]]:
    page = await client.request("GET", f"/threads/{thread_id}/messages")
    return [(m["role"], m["content"]) for m in page["items"]]


async def test_models_and_a_completion_are_real_runs_of_the_keys_owner(
    app: InProcessApp, app_client: Callable[..., Any]
) -> None:
    ada = await app_client()
    async with sdk(app, await key_of(ada)) as client:
        models = await client.models.list()
        assert {"assistant", "supervisor"} <= {m.id for m in models.data}
        raw = await client.chat.completions.with_raw_response.create(
            model="supervisor", messages=[{"role": "user", "content": "What is 17*23?"}]
        )
        completion = raw.parse()
    assert completion.object == "chat.completion" and completion.model == "supervisor"
    answer = completion.choices[0].message
    assert "391" in (answer.content or "") and not answer.tool_calls
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    # The tools ran server-side: reported in the extension, never as tool_calls.
    extension = completion.model_extra["atoll"]
    tools = [e["data"]["tool"] for e in extension["events"] if e["type"] == "tool_executing"]
    assert tools == ["calculator"]
    # The run is Ada's: in her threads, with her question and the stored answer.
    thread_id, run_id = raw.headers["Atoll-Thread-Id"], raw.headers["Atoll-Run-Id"]
    assert extension["thread_id"] == thread_id and extension["run_id"] == run_id
    assert await thread_messages(ada, thread_id) == [
        ("user", "What is 17*23?"),
        ("assistant", answer.content),
    ]
    run = await ada.request("GET", f"/runs/{run_id}")
    assert run["state"] == "completed" and run["agent"] == "supervisor"


async def test_a_streamed_completion_carries_text_thinking_and_tools_then_done(
    app: InProcessApp, app_client: Callable[..., Any]
) -> None:
    ada = await app_client()
    async with sdk(app, await key_of(ada)) as client:
        stream = await client.chat.completions.create(
            model="supervisor",
            messages=[{"role": "user", "content": "What is 17*23?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    with_choice = [c for c in chunks if c.choices]
    assert with_choice[0].choices[0].delta.role == "assistant"
    assert all(not c.choices[0].delta.tool_calls for c in with_choice)
    text = "".join(c.choices[0].delta.content or "" for c in with_choice)
    assert "391" in text
    assert [c.choices[0].finish_reason for c in with_choice if c.choices[0].finish_reason] == [
        "stop"
    ]
    events = [c.model_extra["atoll"] for c in with_choice if c.model_extra.get("atoll")]
    kinds = [e["type"] for e in events]
    assert "tool_executing" in kinds and "tool_completed" in kinds
    assert all(e["type"] != "message_delta" or e["parent_agent"] for e in events)
    thinking = [c.choices[0].delta.model_extra.get("reasoning_content") for c in with_choice]
    assert any(thinking)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # include_usage
    assert chunks[-1].usage.total_tokens > 0
    # The streamed text is the answer Ada's thread stored.
    run_id = chunks[0].id.removeprefix("chatcmpl-")
    run = await ada.request("GET", f"/runs/{run_id}")
    stored = await thread_messages(ada, run["thread_id"])
    assert stored[-1] == ("assistant", text)


async def test_a_conversation_starts_a_thread_and_the_header_continues_it(
    app: InProcessApp, app_client: Callable[..., Any]
) -> None:
    ada = await app_client()
    async with sdk(app, await key_of(ada)) as client:
        first = await client.chat.completions.with_raw_response.create(
            model="assistant",
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": "Hello Ada."},
                {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]},
            ],
        )
        thread_id = first.headers["Atoll-Thread-Id"]
        answer = first.parse().choices[0].message.content
        stored = await thread_messages(ada, thread_id)
        # The system message is not stored: the agent keeps its own instructions.
        assert stored == [
            ("user", "My name is Ada."),
            ("assistant", "Hello Ada."),
            ("user", "What is 2+2?"),
            ("assistant", answer),
        ]
        threads = await ada.request("GET", "/threads")
        assert [t["title"] for t in threads["items"] if t["id"] == thread_id] == ["My name is Ada."]
        # Continued: only the last message is new; what else was sent is not stored again.
        again = await client.chat.completions.with_raw_response.create(
            model="assistant",
            messages=[
                {"role": "user", "content": "ignored"},
                {"role": "user", "content": "Thanks"},
            ],
            extra_headers={"Atoll-Thread-Id": thread_id},
        )
        assert again.headers["Atoll-Thread-Id"] == thread_id
        assert (await thread_messages(ada, thread_id))[4:] == [
            ("user", "Thanks"),
            ("assistant", again.parse().choices[0].message.content),
        ]


async def test_keys_are_refused_when_revoked_read_only_or_another_users(
    app: InProcessApp, app_client: Callable[..., Any]
) -> None:
    ada, bob = await app_client(), await app_client()
    ada_key, bob_key = await key_of(ada), await key_of(bob)
    async with sdk(app, ada_key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="assistant", messages=[{"role": "user", "content": "hello"}]
        )
        thread_id = raw.headers["Atoll-Thread-Id"]
    # Bob's key cannot continue (or, by the REST API, read) Ada's thread: 404, as if absent.
    async with sdk(app, bob_key) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(
                model="assistant",
                messages=[{"role": "user", "content": "what did she say?"}],
                extra_headers={"Atoll-Thread-Id": thread_id},
            )
        assert caught.value.code == "not_found"
    async with app.client() as as_bob:
        as_bob.access_token = bob_key
        page = await as_bob.request("GET", "/threads")
        assert thread_id not in [t["id"] for t in page["items"]]
    assert len(await thread_messages(ada, thread_id)) == 2  # nothing was added
    # A read-only key lists models but cannot start a run.
    async with sdk(app, await key_of(ada, scopes=["read"])) as client:
        assert (await client.models.list()).data
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await client.chat.completions.create(
                model="assistant", messages=[{"role": "user", "content": "hi"}]
            )
        assert denied.value.code == "insufficient_scope"
    # A revoked key is refused at once.
    listed = await ada.request("GET", "/keys")
    for key in listed:
        await ada.request("DELETE", f"/keys/{key['id']}")
    async with sdk(app, ada_key) as client:
        with pytest.raises(openai.AuthenticationError) as revoked:
            await client.models.list()
        assert revoked.value.code in ("invalid_token", "session_revoked")
        assert revoked.value.body["type"] == "authentication_error"  # OpenAI's error shape


async def test_bad_requests_get_openai_errors_with_atolls_codes(
    app: InProcessApp, app_client: Callable[..., Any]
) -> None:
    ada = await app_client()
    async with sdk(app, await key_of(ada)) as client:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, "unknown_agent"),
            (
                {"model": "assistant", "messages": [{"role": "assistant", "content": "hi"}]},
                "validation_error",
            ),
            (
                {
                    "model": "assistant",
                    "messages": [
                        {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}
                    ],
                },
                "validation_error",
            ),
            ({"model": "assistant", "messages": []}, "validation_error"),
        ]
        for body, code in cases:
            with pytest.raises(openai.UnprocessableEntityError) as caught:
                await client.chat.completions.create(**body)
            assert caught.value.code == code, body
            assert caught.value.body["type"] == "invalid_request_error"
    threads = await ada.request("GET", "/threads")
    assert threads["items"] == []  # nothing refused was stored


@asynccontextmanager
async def served_with_model(tmp_path: Path) -> AsyncIterator[tuple[str, FakeOpenAI]]:
    async with serve_fake_openai() as fake:
        model = {"llm_provider": "openai", "llm_base_url": fake.base_url,
                 "llm_api_key": API_KEY, "llm_model": "fake-model"}  # fmt: skip
        async with running_server(make_settings(tmp_path / "data", **model)) as (url, _):
            yield url, fake


@pytest.mark.slow  # a real server: the client closes its connection
async def test_a_stream_the_client_abandons_cancels_its_run(tmp_path: Path) -> None:
    async with served_with_model(tmp_path) as (url, fake), AtollClient(url) as ada:
        await ada.register("ada@example.com", "correct horse battery")
        async with sdk(url, await key_of(ada)) as client:
            stream = await client.chat.completions.create(
                model="assistant", messages=[{"role": "user", "content": "gate"}], stream=True
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    break  # the model's first word: the run waits at the gate
            run_id = chunk.id.removeprefix("chatcmpl-")
            await stream.close()

            async def cancelled() -> bool:
                return (await ada.request("GET", f"/runs/{run_id}"))["state"] == "cancelled"

            await until(cancelled, within=10, what="the abandoned run cancelled")
        events = [e async for e in ada.stream(run_id)]
        assert events[-1]["type"] == "agent_cancelled"
        assert events[-1]["data"]["reason"] == "client_closed"
        fake.gate.set()


async def test_a_run_that_fails_is_an_error_the_client_raises(tmp_path: Path) -> None:
    plans = {"free": {"monthly_tokens": 0}}
    settings = make_settings(tmp_path / "data", plans=plans)
    async with running_app(settings) as app, app.client() as ada:
        await ada.register("ada@example.com", "correct horse battery")
        async with sdk(app, await key_of(ada)) as client:
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(
                    model="assistant", messages=[{"role": "user", "content": "hi"}]
                )
            assert caught.value.code == "quota_exceeded"
            assert caught.value.response.headers["Retry-After"]
            body = caught.value.body
            assert body["scope"] == "user" and body["budget"] == 0


async def test_non_openai_paths_keep_problem_json(app: InProcessApp) -> None:
    async with app.http() as http:
        answer = await http.get("/api/v1/threads")
        assert answer.headers["content-type"] == "application/problem+json"
        answer = await http.get("/v1/models")
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_token"


async def test_many_concurrent_streams_each_get_their_own_answer(
    app: InProcessApp, app_client: Callable[..., Any]
) -> None:
    """Ten users at once, each streaming: every stream gets its own run's text, nobody
    else's (the offline model answers arithmetic from the question itself)."""
    users = [await app_client() for _ in range(10)]
    keys = [await key_of(u) for u in users]

    async def ask(index: int) -> tuple[int, str]:
        async with sdk(app, keys[index]) as client:
            stream = await client.chat.completions.create(
                model="assistant",
                messages=[{"role": "user", "content": f"What is {index}*1000?"}],
                stream=True,
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return index, text

    for index, text in await asyncio.gather(*(ask(i) for i in range(10))):
        assert str(index * 1000) in text, (index, text)
        others = [str(j * 1000) for j in range(1, 10) if j != index]
        assert not any(f" {other}" in text for other in others), (index, text)


async def test_the_per_user_stream_limit_and_size_limits_hold_on_the_new_doors(
    tmp_path: Path,
) -> None:
    """One stream slot: a second streamed completion (or AG-UI run) while one is open is
    429 ``too_many_streams`` and stores nothing; an oversized message is 422; the slot is
    free again once the first stream ends."""
    async with serve_fake_openai() as fake:
        model = {"llm_provider": "openai", "llm_base_url": fake.base_url,
                 "llm_api_key": API_KEY, "llm_model": "fake-model"}  # fmt: skip
        settings = make_settings(
            tmp_path / "data", max_sse_streams=1, max_message_chars=1000, **model
        )
        async with running_app(settings) as app, app.client() as ada:
            await ada.register("ada@example.com", "correct horse battery")
            async with sdk(app, await key_of(ada)) as client:
                held = await client.chat.completions.create(
                    model="assistant", messages=[{"role": "user", "content": "gate"}], stream=True
                )
                async for chunk in held:
                    if chunk.choices and chunk.choices[0].delta.content:
                        break  # the run waits at the gate, its stream open
                with pytest.raises(openai.RateLimitError) as refused:
                    await client.chat.completions.create(
                        model="assistant", messages=[{"role": "user", "content": "hi"}]
                    )
                assert refused.value.code == "too_many_streams"
                async with app.http() as http:
                    agui = await http.post(
                        "/api/v1/agui",
                        json={"threadId": "t", "runId": "r",
                              "messages": [{"id": "1", "role": "user", "content": "hi"}]},
                        headers={"Authorization": f"Bearer {ada.access_token}"},
                    )  # fmt: skip
                assert agui.status_code == 429 and agui.json()["code"] == "too_many_streams"
                fake.gate.set()
                async for _ in held:
                    pass
                threads = (await ada.request("GET", "/threads"))["items"]
                assert len(threads) == 1  # the refused calls stored nothing
                with pytest.raises(openai.UnprocessableEntityError) as big:
                    await client.chat.completions.create(
                        model="assistant",
                        messages=[{"role": "user", "content": "x" * 1001}],
                    )
                assert big.value.code == "validation_error"

                async def slot_free() -> bool:  # released once the first response is over
                    try:
                        answer = await client.chat.completions.create(
                            model="assistant", messages=[{"role": "user", "content": "again"}]
                        )
                    except openai.RateLimitError:
                        return False
                    return bool(answer.choices[0].message.content)

                await until(slot_free, what="the stream slot given back")
