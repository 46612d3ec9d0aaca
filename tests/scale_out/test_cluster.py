"""Scale-out end to end: PostgreSQL + Redis, two API nodes and two workers as processes.

Every process is a real ``atoll serve`` / ``atoll worker`` started by the test on
loopback ports; PostgreSQL and redis-server are throwaway servers the tests
start and stop. The offline model streams slowly (``ATOLL_OFFLINE_TOKEN_DELAY``)
so runs are still executing when a test cancels, kills or disconnects things.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from atoll.client import ApiError, AtollClient, AtollSocket, ends_run
from atoll.store.models import Message, Org, OrgMember, Run

from postgres import create_database, postgres_server
from redis_server import RedisServer, redis_server
from serving import PASSWORD, ServeProcess
from support import until

pytestmark = [pytest.mark.scale_out, pytest.mark.e2e]

HEARTBEAT_TIMEOUT = 3.0
TERMINAL = {"completed", "failed", "cancelled", "timeout", "dead"}


@dataclass
class Deployment:
    """The processes of one scaled-out deployment."""

    database_url: str
    redis: RedisServer
    node_a: ServeProcess
    node_b: ServeProcess
    workers: dict[str, ServeProcess]

    async def run_row(self, run_id: str) -> Run:
        engine = create_async_engine(self.database_url)
        try:
            async with engine.connect() as connection:
                row = (await connection.execute(select(Run).where(Run.id == run_id))).one()
        finally:
            await engine.dispose()
        return row  # type: ignore[return-value]

    async def ended(self, run_id: str) -> Run:
        """The run's row once its end is recorded (10 s at most)."""
        for _ in range(200):
            row = await self.run_row(run_id)
            if row.state in TERMINAL:
                break
            await asyncio.sleep(0.05)
        return row

    async def claimed(self, run_id: str) -> Run:
        """The run's row once a worker has claimed it (10 s at most)."""
        for _ in range(200):
            row = await self.run_row(run_id)
            if row.worker_id is not None:
                break
            await asyncio.sleep(0.05)
        return row

    @contextlib.asynccontextmanager
    async def only_worker_1(self) -> AsyncIterator[dict[str, ServeProcess]]:
        """Stop worker-2 (so worker-1 takes every run); restart stopped workers at the end."""
        await asyncio.to_thread(self.workers["worker-2"].stop, signal.SIGTERM)
        try:
            yield self.workers
        finally:
            for worker in self.workers.values():
                if worker.process is None:
                    await asyncio.to_thread(worker.start)

    async def messages_of(self, user_id: str) -> list[Any]:
        engine = create_async_engine(self.database_url)
        try:
            async with engine.connect() as connection:
                query = select(Message).where(Message.user_id == user_id)
                return list((await connection.execute(query)).all())
        finally:
            await engine.dispose()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("cluster")
    with postgres_server() as postgres, redis_server() as redis:
        database_url = create_database(postgres)
        env = {
            "ATOLL_DATABASE_URL": database_url,
            "ATOLL_REDIS_URL": redis.url,
            "ATOLL_SECRET_KEY": secrets.token_urlsafe(48),
            "ATOLL_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "ATOLL_OFFLINE_TOKEN_DELAY": "0.15",
            "ATOLL_MAX_CONCURRENT_RUNS": "1",
            "ATOLL_SHUTDOWN_GRACE": "10",
            "ATOLL_PLANS": '{"free": {}, "metered": {"monthly_tokens": 1}}',
        }

        def process(name: str, command: str, **extra: str) -> ServeProcess:
            data = root / name
            data.mkdir()
            return ServeProcess(data, command=command, **env, **extra)

        processes = [process("node-a", "serve"), process("node-b", "serve")]
        workers = {
            name: process(name, "worker", ATOLL_WORKER_ID=name) for name in ("worker-1", "worker-2")
        }
        for worker in workers.values():  # each serves /metrics, /healthz, /readyz on its port
            worker.env["ATOLL_WORKER_METRICS_PORT"] = str(worker.port)
        try:
            processes[0].start()  # migrates the database
            processes[1].start()
            for worker in workers.values():
                worker.start()
            yield Deployment(database_url, redis, processes[0], processes[1], workers)
        finally:
            for each in [*processes, *workers.values()]:
                each.kill()


@contextlib.asynccontextmanager
async def user(url: str, email: str, *, register: bool = True) -> AsyncIterator[AtollClient]:
    async with AtollClient(url) as client:
        if register:
            await client.register(email, PASSWORD)
        else:
            await client.login(email, PASSWORD)
        yield client


def gapless(events: list[dict[str, Any]]) -> bool:
    return [e["seq"] for e in events] == list(range(1, len(events) + 1))


async def start_long_run(socket: AtollSocket, until: str) -> tuple[str, list[dict[str, Any]]]:
    """Send a message whose run streams for seconds; returns its id and events up to ``until``."""
    ack = await socket.send_message("Tell me about the runtime", agent="assistant")
    events = []
    async for event in socket.run_events(ack["run_id"]):
        events.append(event)
        if event["type"] == until:
            break
    return ack["run_id"], events


async def collect(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every event the iterator yields."""
    return [event async for event in events]


async def wait_for_state(
    client: AtollClient, run_id: str, states: set[str], within: float
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        run: dict[str, Any] = await client.request("GET", f"/runs/{run_id}")
        if run["state"] in states or time.monotonic() > deadline:
            return run
        await asyncio.sleep(0.1)


async def test_golden_path_runs_on_a_worker_and_resumes_from_another_node(
    deployment: Deployment,
) -> None:
    async with user(deployment.node_a.url, "ada@example.com") as ada:
        async with ada.connect() as socket:  # the socket is on node A
            ack = await socket.send_message("What is 17*23?")
            events = [e async for e in socket.run_events(ack["run_id"])]
        run_id = ack["run_id"]
    assert gapless(events)
    assert [e for e in events if ends_run(e)] == [events[-1]]
    assert events[-1]["type"] == "agent_completed"
    assert "391" in events[-1]["data"]["message"]["content"]
    assert any(e["type"] == "tool_executing" for e in events)
    # The worker records the run's end just after its terminal event (logged, then sent).
    row = await deployment.ended(run_id)
    assert row.worker_id in deployment.workers  # executed by a worker, not by node A
    assert row.state == "completed"

    async with user(deployment.node_b.url, "ada@example.com", register=False) as ada_b:
        async with ada_b.connect() as socket:  # resume on node B, from seq 3
            await socket.resume(run_id, 3)
            resumed = [e async for e in socket.run_events(run_id)]
        assert resumed == events[3:]
        assert [e async for e in ada_b.stream(run_id)] == events  # SSE on node B
        assert await ada_b.events(run_id) == events
        messages = await ada_b.request("GET", f"/threads/{ack['thread_id']}/messages")
        assert [m["role"] for m in messages["items"]] == ["user", "assistant"]


async def test_workers_report_readiness_and_metrics(deployment: Deployment) -> None:
    async with user(deployment.node_a.url, "metrics@example.com") as client:
        accepted = await client.chat("What is 2*21?", agent="assistant")
        await wait_for_state(client, accepted["run"]["id"], TERMINAL, 30)
        completed = 0.0
        for worker in deployment.workers.values():
            ready = await client.http.get(f"{worker.url}/readyz")
            assert ready.status_code == 200
            assert (ready.json()["database"], ready.json()["redis"]) == ("ok", "ok")
            text = (await client.http.get(f"{worker.url}/metrics")).text
            assert "atoll_worker_capacity 16.0" in text
            assert "atoll_queue_depth" in text
            for line in text.splitlines():
                if line.startswith('atoll_runs_finished{state="completed"}'):
                    completed += float(line.split()[-1])
        assert completed >= 1  # the workers executed the runs, and count them


async def test_a_live_run_streams_to_a_socket_and_sse_on_the_other_node(
    deployment: Deployment,
) -> None:
    async with (
        user(deployment.node_a.url, "live@example.com") as on_a,
        user(deployment.node_b.url, "live@example.com", register=False) as on_b,
        on_b.connect() as watcher,  # connected to node B before the run exists
    ):
        accepted = await on_a.chat("What is 6*7?")  # submitted on node A (REST)
        run_id = accepted["run"]["id"]

        async def over_sse() -> list[dict[str, Any]]:
            return [e async for e in on_b.stream(run_id)]  # SSE on node B, while it runs

        sse = asyncio.create_task(over_sse())
        live = [e async for e in watcher.run_events(run_id)]
        streamed = await asyncio.wait_for(sse, 30)
    assert gapless(live)
    assert live[-1]["type"] == "agent_completed"
    assert "42" in live[-1]["data"]["message"]["content"]
    assert streamed == live


async def test_cancel_sent_to_node_b_stops_the_run_on_its_worker(deployment: Deployment) -> None:
    async with (
        user(deployment.node_a.url, "cancel@example.com") as on_a,
        user(deployment.node_b.url, "cancel@example.com", register=False) as on_b,
        on_a.connect() as socket,
    ):
        run_id, events = await start_long_run(socket, until="message_delta")
        live = await on_b.request("GET", f"/runs/{run_id}")  # as seen from node B
        assert (live["state"], live["finished_at"]) == ("running", None)
        assert live["started_at"] is not None
        cancelled = await on_b.request("POST", f"/runs/{run_id}/cancel")
        assert cancelled["id"] == run_id
        events += [e async for e in socket.run_events(run_id)]
        assert events[-1]["type"] == "agent_cancelled"
        assert gapless(events)
        run = await wait_for_state(on_b, run_id, TERMINAL, 10)
        assert run["state"] == "cancelled"
        row = await deployment.run_row(run_id)
        assert row.worker_id in deployment.workers


async def test_a_run_waiting_for_its_slot_waits_in_the_database_and_is_cancelled_at_once(
    deployment: Deployment,
) -> None:
    async with (
        user(deployment.node_a.url, "waiter@example.com") as on_a,
        user(deployment.node_b.url, "waiter@example.com", register=False) as on_b,
        on_a.connect() as socket,
    ):
        first, _ = await start_long_run(socket, until="agent_started")
        waiting = (await on_a.chat("What is 5*5?", agent="assistant"))["run"]["id"]
        # It waits for the user's one slot in the database: no worker holds it meanwhile.
        row = await deployment.run_row(waiting)
        assert (row.state, row.worker_id) == ("pending", None)
        await on_b.request("POST", f"/runs/{waiting}/cancel")
        run = await wait_for_state(on_b, waiting, TERMINAL, 5)
        assert run["state"] == "cancelled"
        assert [(e["seq"], e["type"]) for e in await on_b.events(waiting)] == [
            (1, "agent_cancelled")
        ]
        rest = [e async for e in socket.run_events(first)]
        assert rest[-1]["type"] == "agent_completed"  # the other run was not disturbed


async def test_two_users_events_never_cross_across_nodes(deployment: Deployment) -> None:
    async with (
        user(deployment.node_a.url, "iso-ada@example.com") as ada,
        user(deployment.node_b.url, "iso-bob@example.com") as bob,
        user(deployment.node_b.url, "iso-ada@example.com", register=False) as ada_on_b,
        ada.connect() as ada_socket,
        bob.connect() as bob_socket,
        ada_on_b.connect() as ada_b_socket,
    ):
        ada_runs = [(await ada_socket.send_message(f"What is {n}*11?"))["run_id"] for n in (2, 3)]
        bob_runs = [(await bob_socket.send_message(f"What is {n}*13?"))["run_id"] for n in (4, 5)]

        async def collect(socket: Any, runs: list[str]) -> list[dict[str, Any]]:
            frames, open_runs = [], set(runs)
            async with asyncio.timeout(60):
                while open_runs:
                    frame = await socket.receive()
                    if "seq" in frame:
                        frames.append(frame)
                        if ends_run(frame):
                            open_runs.discard(frame["run_id"])
            return frames

        ada_frames, bob_frames, ada_b_frames = await asyncio.gather(
            collect(ada_socket, ada_runs), collect(bob_socket, bob_runs),
            collect(ada_b_socket, ada_runs),
        )  # fmt: skip
    assert {f["run_id"] for f in ada_frames} == set(ada_runs)
    assert {f["run_id"] for f in ada_b_frames} == set(ada_runs)  # ada's other node too
    assert {f["run_id"] for f in bob_frames} == set(bob_runs)
    for frames, runs in ((ada_frames, ada_runs), (bob_frames, bob_runs)):
        for run_id in runs:
            assert gapless([f for f in frames if f["run_id"] == run_id])
    contents = [f["data"]["message"]["content"] for f in ada_frames if ends_run(f)]
    assert sorted("22" in c or "33" in c for c in contents) == [True, True]


async def test_the_per_user_run_limit_holds_across_nodes_and_workers(
    deployment: Deployment,
) -> None:
    async with (
        user(deployment.node_a.url, "limit@example.com") as on_a,
        user(deployment.node_b.url, "limit@example.com", register=False) as on_b,
    ):
        first, second = await asyncio.gather(
            on_a.chat("What is 7*8?", agent="assistant"),
            on_b.chat("What is 9*9?", agent="assistant"),
        )
        spans = []
        for accepted in (first, second):
            run = await wait_for_state(on_a, accepted["run"]["id"], TERMINAL, 60)
            assert run["state"] == "completed"
            events = await on_a.events(run["id"])
            started = next(e["ts"] for e in events if e["type"] == "agent_started")
            spans.append(
                (datetime.fromisoformat(started), datetime.fromisoformat(events[-1]["ts"]))
            )
    spans.sort()
    assert spans[1][0] >= spans[0][1]  # ATOLL_MAX_CONCURRENT_RUNS=1: never both at once


async def test_an_organisation_s_plan_budget_holds_on_nodes_and_workers(
    deployment: Deployment,
) -> None:
    async with user(deployment.node_a.url, "meter@metered.test") as on_a:
        me = await on_a.request("GET", "/me")
        engine = create_async_engine(deployment.database_url)
        try:
            async with engine.begin() as connection:
                now = datetime.now(UTC)
                await connection.execute(insert(Org).values(
                    id="org_metered", name="Metered", plan="metered", sso_required=False,
                    created_at=now,
                ))  # fmt: skip
                await connection.execute(insert(OrgMember).values(
                    user_id=me["id"], org_id="org_metered", role="member", joined_at=now
                ))  # fmt: skip
        finally:
            await engine.dispose()
        async with user(deployment.node_b.url, "meter@metered.test", register=False) as on_b:
            assert (await on_b.request("GET", "/me"))["plan"] == "metered"
            # Both admitted with nothing spent; the second waits on a worker for the one
            # slot (ATOLL_MAX_CONCURRENT_RUNS=1), and is checked again as it starts there.
            first, second = await asyncio.gather(
                on_a.chat("What is 7*8?", agent="assistant"),
                on_b.chat("What is 9*9?", agent="assistant"),
            )
            ran = await wait_for_state(on_a, first["run"]["id"], TERMINAL, 60)
            waited = await wait_for_state(on_a, second["run"]["id"], TERMINAL, 60)
            states = sorted([ran["state"], waited["state"]])
            assert states == ["completed", "failed"]
            failed = ran if ran["state"] == "failed" else waited
            assert failed["error"]["code"] == "quota_exceeded"
            with pytest.raises(ApiError) as refused:  # counted by the worker, seen by node B
                await on_b.chat("and now?")
            assert (refused.value.status, refused.value.code) == (429, "quota_exceeded")
            usage = (await on_a.request("GET", "/me"))["usage"]
            assert usage["tokens"] > 0 and usage["org_tokens"] == usage["tokens"]


async def test_a_stopping_worker_finishes_its_run_and_the_waiting_one_runs_elsewhere(
    deployment: Deployment,
) -> None:
    async with (
        deployment.only_worker_1() as workers,
        user(deployment.node_a.url, "drain@example.com") as client,
    ):
        async with client.connect() as socket:
            run_id, events = await start_long_run(socket, until="agent_started")
            # The user's limit is 1: this one waits for the slot, in the database.
            waiting = (await client.chat("What is 3*14?", agent="assistant"))["run"]
            workers["worker-1"].process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            events += [e async for e in socket.run_events(run_id)]
        assert events[-1]["type"] == "agent_completed"  # finished within the grace
        assert gapless(events)
        code = await asyncio.to_thread(workers["worker-1"].stop, 0)  # 0: just wait
        assert code == 0
        assert "waiting up to 10s for 1 run(s)" in workers["worker-1"].log_text()
        row = await deployment.run_row(waiting["id"])
        assert (row.state, row.worker_id) == ("pending", None)  # queued, held by nobody
        await asyncio.to_thread(workers["worker-2"].start)
        run = await wait_for_state(client, waiting["id"], TERMINAL, 30)
        assert run["state"] == "completed"
        row = await deployment.run_row(waiting["id"])
        assert (row.worker_id, row.attempts) == ("worker-2", 1)


@pytest.mark.chaos
async def test_kill_9_of_a_worker_marks_its_run_dead_and_the_waiting_one_runs_elsewhere(
    deployment: Deployment,
) -> None:
    async with (
        deployment.only_worker_1() as workers,
        user(deployment.node_a.url, "kill@example.com") as client,
    ):
        async with client.connect() as socket:
            started, _ = await start_long_run(socket, until="agent_started")  # holds the slot
            # The user's limit is 1: this run waits for the slot in the database.
            waiting = await client.chat("What is 12*12?", agent="assistant")
            waiting_id = waiting["run"]["id"]
            row = await deployment.run_row(waiting_id)
            assert (row.worker_id, row.state) == (None, "pending")
            assert await client.events(waiting_id) == []  # not begun: no event yet
            # Killed while the first run still streams (for seconds); the sweeper ends it
            # once the worker's heartbeat has lapsed (a deadline far past that, for a
            # clear failure if it never does).
            await asyncio.to_thread(workers["worker-1"].stop, signal.SIGKILL)
            rest = await asyncio.wait_for(
                collect(socket.run_events(started)), HEARTBEAT_TIMEOUT + 60
            )
        # Started only now (a process start takes seconds on a busy machine, and the
        # first run must still be streaming when its worker dies): it takes the retry.
        await asyncio.to_thread(workers["worker-2"].start)
        assert rest[-1]["type"] == "agent_error"
        assert rest[-1]["data"]["state"] == "dead"
        assert rest[-1]["data"]["code"] == "worker_lost"
        run = await client.request("GET", f"/runs/{started}")
        assert run["state"] == "dead"
        assert gapless(await client.events(started))
        retried = await wait_for_state(client, waiting_id, TERMINAL, 30)
        assert retried["state"] == "completed"
        row = await deployment.run_row(waiting_id)
        assert (row.worker_id, row.attempts) == ("worker-2", 1)  # its turn came: the dead run
        events = await client.events(waiting_id)
        assert gapless(events)
        assert "144" in events[-1]["data"]["message"]["content"]


@pytest.mark.chaos
async def test_a_worker_paused_past_its_heartbeat_cannot_overwrite_its_runs_end(
    deployment: Deployment,
) -> None:
    async with (
        deployment.only_worker_1() as workers,
        user(deployment.node_a.url, "paused@example.com") as client,
        client.connect() as socket,
    ):
        run_id, seen = await start_long_run(socket, until="message_delta")
        pid = workers["worker-1"].process.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGSTOP)  # alive, but silent: the cluster presumes it dead
        try:
            seen += [e async for e in socket.run_events(run_id)]
        finally:
            os.kill(pid, signal.SIGCONT)
        assert (seen[-1]["type"], seen[-1]["data"]["code"]) == ("agent_error", "worker_lost")
        # The worker wakes up and carries on with the run: its events are refused.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                while True:
                    frame = await socket.receive()
                    assert frame.get("run_id") != run_id, frame  # nothing after the end
        logged = await client.events(run_id)
        assert gapless(logged)
        assert [e["type"] for e in logged if ends_run(e)] == ["agent_error"]
        assert logged == seen
        assert (await client.request("GET", f"/runs/{run_id}"))["state"] == "dead"
        assert "already has an event" in workers["worker-1"].log_text()
        again = await socket.send_message("What is 4*4?", agent="assistant")  # it still works
        after = [e async for e in socket.run_events(again["run_id"])]
        assert after[-1]["type"] == "agent_completed"


async def test_a_run_that_ends_while_redis_is_down_reaches_the_open_socket(
    deployment: Deployment,
) -> None:
    async with (
        user(deployment.node_a.url, "outage@example.com") as client,
        client.connect() as socket,
    ):
        run_id, seen = await start_long_run(socket, until="message_delta")
        await asyncio.to_thread(deployment.redis.stop)  # the rest is published into the void
        try:
            await wait_for_state(client, run_id, TERMINAL, 30)  # ends meanwhile
        finally:
            await asyncio.to_thread(deployment.redis.start)
        async with asyncio.timeout(20):  # the node's relay reconnects and resyncs the socket
            seen += [e async for e in socket.run_events(run_id)]
        assert gapless(seen)
        assert seen[-1]["type"] == "agent_completed"
        assert seen == await client.events(run_id)


async def test_a_redis_restart_under_load_loses_no_stored_message(
    deployment: Deployment,
) -> None:
    accepted: dict[str, tuple[str, int]] = {}  # run id -> (message id, client), acknowledged
    refused: list[tuple[int, object]] = []
    outage_over = asyncio.Event()

    async def load(client: AtollClient, index: int) -> None:
        sent = 0
        while sent < 8 or not outage_over.is_set():  # at least 8, and on until Redis is back
            try:
                answer = await client.chat(f"What is {index}+{sent}?", agent="assistant")
                accepted[answer["run"]["id"]] = (answer["message"]["id"], index)
            except ApiError as exc:
                refused.append((exc.status, exc.problem.get("code")))
            except httpx.TransportError:
                refused.append((0, "transport"))
            sent += 1
            await asyncio.sleep(0.1)
            if sent > 400:
                raise AssertionError("the load never saw the end of the outage")

    async def readiness(url: str) -> tuple[int, dict[str, Any]]:
        answer = await clients[0].http.get(f"{url}/readyz")
        return answer.status_code, answer.json()

    async def ready_is(url: str, status: int) -> bool:
        return (await readiness(url))[0] == status

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(user(node.url, f"load{i}@example.com"))
            for i, node in enumerate([deployment.node_a, deployment.node_b] * 2)
        ]
        tasks = [asyncio.create_task(load(c, i)) for i, c in enumerate(clients)]
        await until(lambda: len(accepted) >= 4, 20, "the load is running")
        await asyncio.to_thread(deployment.redis.stop)  # data lost: no persistence
        node_b = deployment.node_b.url
        await until(lambda: ready_is(node_b, 503), 10, "node B reports Redis down")
        status, ready = await readiness(node_b)
        assert (status, ready["redis"], ready["database"]) == (503, "unreachable", "ok")
        await until(lambda: len(refused) >= 4, 20, "messages refused during the outage")
        await asyncio.to_thread(deployment.redis.start)
        for node in (deployment.node_a, deployment.node_b):  # readiness recovers by itself
            await until(partial(ready_is, node.url, 200), 20, "the node ready again")
        outage_over.set()
        await asyncio.gather(*tasks)
        assert accepted and refused  # some messages were refused (503) during the outage
        assert set(refused) == {(503, "unavailable")}, refused
        stored: dict[str, str | None] = {}
        for client in clients:
            me = await client.request("GET", "/me")
            stored |= {m.id: m.run_id for m in await deployment.messages_of(me["id"])}
        for run_id, (message_id, _) in accepted.items():
            assert stored.get(message_id) == run_id  # no acknowledged message lost
        states = {}
        for run_id, (_, index) in accepted.items():  # every acknowledged run ends
            run = await wait_for_state(clients[index], run_id, TERMINAL, 60)
            states[run_id] = run["state"]
        assert set(states.values()) == {"completed"}, states
        for node in (deployment.node_a, deployment.node_b):
            status, ready = await readiness(node.url)
            assert (status, ready["status"], ready["redis"]) == (200, "ready", "ok")
        after = await clients[0].chat("What is 2+2?", agent="assistant")  # recovered by itself
        done = await wait_for_state(clients[0], after["run"]["id"], TERMINAL, 30)
        assert done["state"] == "completed"


def test_atoll_worker_refuses_to_start_without_redis(tmp_path: Path) -> None:
    worker = ServeProcess(tmp_path, command="worker", ATOLL_REDIS_URL="")
    with pytest.raises(RuntimeError, match="exited with 2"):
        worker.start()
    assert "ATOLL_REDIS_URL" in worker.log_text()
