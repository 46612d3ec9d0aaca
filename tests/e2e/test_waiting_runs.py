"""Runs that wait for their turn cost nothing while they wait, and are bounded on every door.

A run queued behind another in its thread (``multitask: enqueue``) is stored
PENDING and held by nothing — no task, no polling — until the run before it ends
and hands it the turn. A thread holds at most ``max_waiting_runs_per_thread``
such runs and a user at most ``max_waiting_runs`` runs not yet running; beyond,
every door answers 429 ``too_many_waiting`` and stores nothing.

The model is the OpenAI-compatible fake: a question with "gate" streams one word
and holds its run until the test opens the gate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import text

from atoll.client import ApiError, AtollClient
from atoll.server.serve import running_server
from atoll.server.services import Services
from integration.fake_openai import API_KEY, FakeOpenAI, serve_fake_openai

from serving import PASSWORD, make_settings
from support import until

pytestmark = [pytest.mark.e2e, pytest.mark.security]


@asynccontextmanager
async def served(
    tmp_path: Path, **settings: Any
) -> AsyncIterator[tuple[str, Services, FakeOpenAI]]:
    async with serve_fake_openai() as fake:
        model = {"llm_provider": "openai", "llm_base_url": fake.base_url,
                 "llm_api_key": API_KEY, "llm_model": "fake-model"}  # fmt: skip
        config = make_settings(tmp_path / "data", **model, **settings)
        async with running_server(config) as (url, server):
            yield url, server.config.app.state.services, fake


@asynccontextmanager
async def user(url: str, email: str) -> AsyncIterator[AtollClient]:
    async with AtollClient(url) as client:
        await client.register(email, PASSWORD)
        yield client


async def enqueue(client: AtollClient, thread_id: str, text: str) -> dict[str, Any]:
    body = {"message": text, "multitask": "enqueue", "agent": "assistant"}
    answer: dict[str, Any] = await client.request("POST", f"/threads/{thread_id}/runs", json=body)
    return answer


async def refused(call: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await call
    return caught.value


def held_here(services: Services) -> set[str]:
    consumer = services.runs._runs.consumer
    assert consumer is not None
    return consumer.known()


async def test_queued_runs_are_held_by_nothing_and_run_in_order_with_the_answers_before(
    tmp_path: Path,
) -> None:
    async with served(tmp_path) as (url, services, fake), user(url, "q@x.io") as ada:
        first = await ada.chat("gate", agent="assistant")
        thread = first["thread_id"]
        queued = [await enqueue(ada, thread, f"say: answer {n}") for n in range(3)]
        await until(lambda: len(fake.requests) == 1, what="the first run at the model")
        # Waiting runs hold no task, no slot and no memory: only the running one is here.
        assert held_here(services) == {first["run"]["id"]}
        states = [(await ada.request("GET", f"/runs/{q['run']['id']}"))["state"] for q in queued]
        assert states == ["pending"] * 3
        fake.gate.set()
        for item in queued:
            events = [e async for e in ada.stream(item["run"]["id"])]
            assert events[-1]["type"] == "agent_completed"
        # Each ran after the one before, and saw its answer.
        questions = [next(m for m in reversed(r["messages"]) if m["role"] == "user")["content"]
                     for r in fake.requests]  # fmt: skip
        assert questions == ["gate", "say: answer 0", "say: answer 1", "say: answer 2"]
        last_history = [m["content"] for m in fake.requests[-1]["messages"]]
        assert "answer 1" in last_history and "answer 0" in last_history


async def test_cancelling_or_deleting_waiting_runs_ends_them_and_the_turn_passes_on(
    tmp_path: Path,
) -> None:
    async with served(tmp_path) as (url, _, fake), user(url, "c@x.io") as ada:
        first = await ada.chat("gate", agent="assistant")
        thread = first["thread_id"]
        second, third = await enqueue(ada, thread, "say: two"), await enqueue(ada, thread, "say: 3")
        await ada.request("POST", f"/runs/{second['run']['id']}/cancel")
        fake.gate.set()
        assert [e async for e in ada.stream(second["run"]["id"])][-1]["type"] == "agent_cancelled"
        assert [e async for e in ada.stream(third["run"]["id"])][-1]["type"] == "agent_completed"

        fake.gate.clear()
        held = await ada.request(
            "POST", f"/threads/{thread}/runs", json={"message": "gate", "agent": "assistant"}
        )
        waiting = await enqueue(ada, thread, "say: never")
        await ada.request("DELETE", f"/threads/{thread}")
        for run in (held, waiting):
            with pytest.raises(ApiError):  # the thread and its runs are gone
                await ada.request("GET", f"/runs/{run['run']['id']}")
        fake.gate.set()
        assert all("never" not in str(r["messages"]) for r in fake.requests)


async def test_a_thread_holds_at_most_its_bound_of_waiting_runs(tmp_path: Path) -> None:
    async with (
        served(tmp_path, max_waiting_runs_per_thread=2) as (url, _, fake),
        user(url, "t@x.io") as ada,
    ):
        first = await ada.chat("gate", agent="assistant")
        thread = first["thread_id"]
        await enqueue(ada, thread, "say: a")
        await enqueue(ada, thread, "say: b")
        before = await ada.request("GET", f"/threads/{thread}/messages")
        rest = await refused(enqueue(ada, thread, "say: c"))
        assert (rest.status, rest.code) == (429, "too_many_waiting")
        assert rest.problem["scope"] == "thread" and rest.problem["limit"] == 2
        async with ada.connect() as socket:
            frame = await socket.send_message(
                "say: d", thread_id=thread, multitask="enqueue", agent="assistant"
            )
        assert frame["type"] == "error" and frame["code"] == "too_many_waiting"
        assert await ada.request("GET", f"/threads/{thread}/messages") == before
        fake.gate.set()


async def test_a_user_holds_at_most_their_bound_of_runs_not_yet_running_on_every_door(
    tmp_path: Path,
) -> None:
    limits = {"max_concurrent_runs": 1, "max_waiting_runs": 2}
    async with served(tmp_path, **limits) as (url, services, fake), user(url, "u@x.io") as ada:
        await ada.chat("gate", agent="assistant")  # running: it holds the one slot
        await until(lambda: len(fake.requests) == 1, what="the first run at the model")
        await ada.chat("say: one", agent="assistant")  # two more wait for the slot
        await ada.chat("say: two", agent="assistant")
        threads = (await ada.request("GET", "/threads"))["items"]
        rest = await refused(ada.chat("say: three", agent="assistant"))
        assert (rest.status, rest.code, rest.problem["scope"]) == (429, "too_many_waiting", "user")
        async with ada.connect() as socket:
            frame = await socket.send_message("say: four", agent="assistant")
        assert (frame["type"], frame["code"]) == ("error", "too_many_waiting")
        key = (await ada.request("POST", "/keys", json={"name": "k"}))["key"]
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as sdk:
            with pytest.raises(openai.RateLimitError) as caught:
                await sdk.chat.completions.create(
                    model="assistant", messages=[{"role": "user", "content": "say: five"}]
                )
        assert caught.value.code == "too_many_waiting"
        async with httpx.AsyncClient() as http:
            agui = await http.post(
                f"{url}/api/v1/agui",
                json={"threadId": "t-6", "runId": "r-6",
                      "messages": [{"id": "1", "role": "user", "content": "say: six"}]},
                headers={"Authorization": f"Bearer {ada.access_token}"},
            )  # fmt: skip
        assert (agui.status_code, agui.json()["code"]) == (429, "too_many_waiting")
        assert (await ada.request("GET", "/threads"))["items"] == threads  # nothing stored
        fake.gate.set()
        await until(lambda: not held_here(services), within=30, what="every run ended")


async def test_deleting_a_thread_ends_every_run_of_it_before_the_204(tmp_path: Path) -> None:
    """Delete a thread while its runs are executing and queued and messages keep coming:
    before the 204 every run has its one terminal event, afterwards nothing of it runs,
    nothing is left behind, and a message sent to it meanwhile is refused (404) or ended."""
    limits = {"max_waiting_runs_per_thread": 50, "max_waiting_runs": 50}
    async with served(tmp_path, **limits) as (url, services, fake), user(url, "d@x.io") as ada:
        seen: dict[str, list[str]] = {}
        async with ada.connect() as socket:
            first = await socket.send_message("gate", agent="assistant")
            thread = first["thread_id"]
            for n in range(5):
                await socket.send_message(
                    f"say: {n}", thread_id=thread, multitask="enqueue", agent="assistant"
                )
            await until(lambda: len(fake.requests) == 1, what="the first run at the model")

            async def keep_sending() -> list[int]:
                statuses = []
                for n in range(20):
                    body = {"message": f"say: late {n}", "multitask": "enqueue"}
                    try:
                        await ada.request("POST", f"/threads/{thread}/runs", json=body)
                        statuses.append(202)
                    except ApiError as error:
                        statuses.append(error.status)
                return statuses

            sender = asyncio.create_task(keep_sending())
            await ada.request("DELETE", f"/threads/{thread}")
            statuses = await sender

            # Every run of the thread that reached the socket has ended there, once.
            def ended(types: list[str]) -> bool:
                return any(t in ("agent_completed", "agent_cancelled") for t in types)

            async with asyncio.timeout(10):
                while len(seen) < 6 or not all(ended(types) for types in seen.values()):
                    frame = await socket.receive()
                    if "run_id" in frame and "seq" in frame and not frame["parent_agent"]:
                        seen.setdefault(frame["run_id"], []).append(frame["type"])
        assert set(statuses) <= {202, 404}
        assert statuses[-1] == 404  # the thread is gone
        for types in seen.values():
            assert sum(t in ("agent_completed", "agent_cancelled", "agent_error")
                       for t in types) == 1, types  # fmt: skip
        fake.gate.set()
        assert not services.runs._runs.consumer.known()  # nothing of it held, nothing runs
        assert services.factory.live_runs() == []
        async with services.db.session() as session:
            orphans = await session.execute(
                text("SELECT count(*) FROM run_events WHERE run_id NOT IN (SELECT id FROM runs)")
            )
            assert orphans.scalar() == 0
            assert (await session.execute(text("SELECT count(*) FROM runs"))).scalar() == 0
