"""Nothing grows per run: after a burst of runs, every per-run structure is back to empty.

The durable record of a run is the database; what the process keeps about it in
memory (tracker record, tasks, engines, slots, a socket's cursor) must go away
once the run has ended (R5 of the exactly-once issue).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.client import AtollClient
from atoll.runtime.state import ExecutionState
from atoll.server.serve import running_server
from atoll.server.services import Services

from serving import PASSWORD, make_settings
from support import until

pytestmark = [pytest.mark.e2e]


async def test_finished_runs_leave_no_trace_in_memory(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", tracker_retention=0.2, messages_per_minute=1000)
    async with running_server(settings) as (url, server), AtollClient(url) as client:
        services: Services = server.config.app.state.services
        await client.register("leak@example.com", PASSWORD)
        async with client.connect() as socket:
            for n in range(30):
                ack = await socket.send_message(f"What is {n}*3?", agent="assistant")
                assert [e async for e in socket.run_events(ack["run_id"])][-1]["data"]
            runs, factory = services.runs, services.factory
            await until(lambda: len(factory.tracker) == 0, 10, "the tracker forgot the runs")
            consumer = runs._runs.consumer
            assert consumer is not None
            await until(lambda: not consumer.runs, 5, "the run tasks are gone")
            totals = factory.tracker.finished_totals()  # the counts outlive the records
            assert totals[ExecutionState.COMPLETED] == 30
            assert not consumer._prepared_runs and not consumer._cancel_requests
            assert not runs._submissions and not runs._stored
            assert not factory._engines
            assert factory.slots.active(client.user["id"]) == 0  # type: ignore[attr-defined,index]
            (connection,) = services.connections._by_user[client.user["id"]]  # type: ignore[index]
            assert connection._following == {}
            assert len(connection._ended) == 30
