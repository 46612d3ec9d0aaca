"""The Golden Path on PostgreSQL (``ATOLL_DATABASE_URL``) instead of SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atoll.client import ApiError, AtollClient, ends_run
from atoll.server.serve import running_server

from postgres import create_database, postgres_server
from serving import PASSWORD, make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.golden_path]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_server() as url:
        yield url


async def chat(client: AtollClient, text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    async with client.connect() as socket:
        ack = await socket.send_message(text)
        return ack, [e async for e in socket.run_events(ack["run_id"])]


async def test_golden_path_on_postgres(postgres: str, tmp_path: Path) -> None:
    url = await asyncio.to_thread(create_database, postgres)
    settings = make_settings(tmp_path / "data", database_url=url)
    async with running_server(settings) as (base, _):
        ada, bob = AtollClient(base), AtollClient(base)
        await ada.register("ada@example.com", PASSWORD)
        await bob.register("bob@example.com", PASSWORD)
        (ack, events), (bob_ack, bob_events) = await asyncio.gather(
            chat(ada, "What is 17*23?"), chat(bob, "What is 6*7?")
        )
        for run_id, stream in ((ack["run_id"], events), (bob_ack["run_id"], bob_events)):
            assert {e["run_id"] for e in stream} == {run_id}
            assert [e["seq"] for e in stream] == list(range(1, len(stream) + 1))
            assert [e for e in stream if ends_run(e)] == [stream[-1]]
        assert "391" in events[-1]["data"]["message"]["content"]
        messages = await ada.request("GET", f"/threads/{ack['thread_id']}/messages")
        assert [m["role"] for m in messages["items"]] == ["user", "assistant"]
        assert [e async for e in ada.stream(ack["run_id"])] == events
        with pytest.raises(ApiError) as other:
            await bob.request("GET", f"/runs/{ack['run_id']}")
        assert other.value.status == 404
        await ada.refresh()
        await ada.logout()
        with pytest.raises(ApiError):
            await ada.request("GET", "/me")
        await ada.aclose()
        await bob.aclose()
    # Restart on the same database: everything is still there.
    async with running_server(settings) as (base, _), AtollClient(base) as again:
        await again.login("ada@example.com", PASSWORD)
        assert await again.events(ack["run_id"]) == events
