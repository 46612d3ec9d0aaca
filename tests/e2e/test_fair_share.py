"""A user's runs are charged the CPU they take on the server, and a spent CPU budget refuses
the user's next message on every door — not another user's.

The budget here is tiny (0.1 ms a day), so one run spends it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from atoll.client import ApiError, AtollClient
from atoll.server.serve import running_server

from serving import PASSWORD, make_settings
from support import until

pytestmark = [pytest.mark.e2e, pytest.mark.security]


async def test_a_spent_cpu_budget_refuses_the_next_message_on_every_door(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", cpu_budget_seconds=0.0001, cpu_budget_period=86_400)
    async with (
        running_server(settings) as (url, _),
        AtollClient(url) as ada,
        AtollClient(url) as bob,
    ):
        await ada.register("ada@example.com", PASSWORD)
        await bob.register("bob@example.com", PASSWORD)
        first = await ada.chat("What is 6*7?", agent="assistant")
        events = [e async for e in ada.stream(first["run"]["id"])]
        assert events[-1]["type"] == "agent_completed"

        async def refused() -> bool:  # charged as the run's task ends, just after its event
            try:
                await ada.chat("hello", agent="assistant")
            except ApiError as error:
                return error.code == "cpu_budget_exceeded"
            return False

        await until(refused, what="the budget spent")
        threads = (await ada.request("GET", "/threads"))["items"]
        with pytest.raises(ApiError) as rest:
            await ada.chat("hello again", agent="assistant")
        assert rest.value.status == 429 and rest.value.problem["retry_after"] > 0
        async with ada.connect() as socket:
            frame = await socket.send_message("over the socket", agent="assistant")
        assert (frame["type"], frame["code"]) == ("error", "cpu_budget_exceeded")
        key = (await ada.request("POST", "/keys", json={"name": "k"}))["key"]
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as sdk:
            with pytest.raises(openai.RateLimitError) as door:
                await sdk.chat.completions.create(
                    model="assistant", messages=[{"role": "user", "content": "hi"}]
                )
        assert door.value.code == "cpu_budget_exceeded"
        async with httpx.AsyncClient() as http:
            agui = await http.post(
                f"{url}/api/v1/agui",
                json={"threadId": "t", "runId": "r",
                      "messages": [{"id": "1", "role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {ada.access_token}"},
            )  # fmt: skip
        assert (agui.status_code, agui.json()["code"]) == (429, "cpu_budget_exceeded")
        assert int(agui.headers["retry-after"]) > 0
        assert (await ada.request("GET", "/threads"))["items"] == threads  # nothing stored
        # Another user's budget is their own.
        other = await bob.chat("What is 6*7?", agent="assistant")
        assert [e async for e in bob.stream(other["run"]["id"])][-1]["type"] == "agent_completed"


async def test_runs_waiting_for_room_go_cheapest_user_first_not_first_come(
    tmp_path: Path,
) -> None:
    """One run at a time: a user whose runs cost CPU lately waits behind one whose did not,
    though the costly user's message came first."""
    settings = make_settings(tmp_path / "data", run_capacity=1, offline_token_delay=0.05)
    async with (
        running_server(settings) as (url, server),
        AtollClient(url) as ada,
        AtollClient(url) as bob,
    ):
        await ada.register("ada@example.com", PASSWORD)
        await bob.register("bob@example.com", PASSWORD)
        consumer = server.config.app.state.services.runs._runs.consumer
        warm = await ada.chat("What is 6*7?", agent="assistant")  # Ada has spent CPU lately
        assert [e async for e in ada.stream(warm["run"]["id"])][-1]["type"] == "agent_completed"
        ada_id = (await ada.request("GET", "/me"))["id"]
        await until(lambda: consumer.costs.of(ada_id) > 0, what="ada's cost")
        running = await ada.chat("hello", agent="assistant")  # takes the one place
        ada_waits = await ada.chat("hello again", agent="assistant")
        bob_waits = await bob.chat("hello", agent="assistant")
        await until(lambda: len(consumer.known()) == 3, what="both waiting")

        async def started(client: AtollClient, accepted: dict[str, Any]) -> str:
            events = [e async for e in client.stream(accepted["run"]["id"])]
            return str(events[0]["ts"])

        assert await started(ada, running) < await started(bob, bob_waits)
        assert await started(bob, bob_waits) < await started(ada, ada_waits)
