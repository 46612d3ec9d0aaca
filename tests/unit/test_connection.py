"""One socket's delivery cursor: live pushes, resumes, resends and resyncs in racy orders.

The connection writes to a recording sink in place of Starlette's WebSocket (the
only thing replaced); the event log is the real in-memory log. Each test feeds
the writer the items in an order the server can really produce, then checks
what the client would have seen: every run's ``ack`` first, ``seq`` 1..N once.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from atoll.bus.memory import InMemoryRunEventLog, Resync
from atoll.runtime.events import EventType, RunEvent
from atoll.runtime.ids import new_id
from atoll.runtime.tracker import AgentExecutionTracker
from atoll.server.connections import Ack, Connection, Outgoing, Resume
from atoll.server.metrics import Metrics

pytestmark = pytest.mark.unit

USER = new_id("usr")
THREAD = new_id("thr")
END = {"type": "end-of-test"}


class Sink:
    """Stands in for the socket: records every text frame written."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.drained = asyncio.Event()

    async def send_text(self, text: str) -> None:
        frame = json.loads(text)
        if frame == END:
            self.drained.set()
        else:
            self.frames.append(frame)


def event(run_id: str, seq: int, *, last: bool = False, user_id: str = USER) -> RunEvent:
    kind = EventType.AGENT_COMPLETED if last else EventType.MESSAGE_DELTA
    data: dict[str, Any] = {"message": {"id": "m", "role": "assistant", "content": "x"}}
    if not last:
        data = {"message_id": "m", "delta": str(seq)}
    return RunEvent.build(
        type=kind,
        run_id=run_id,
        thread_id=THREAD,
        user_id=user_id,
        seq=seq,
        agent="assistant",
        parent_agent=None,
        data=data,
    )


def ack_of(run_id: str, client_id: str | None = None) -> dict[str, Any]:
    frame = {"type": "ack", "thread_id": THREAD, "run_id": run_id, "message_id": "msg_x"}
    if client_id is not None:
        frame["client_id"] = client_id
    return frame


class Harness:
    def __init__(self) -> None:
        self.log = InMemoryRunEventLog()
        self.sink = Sink()
        self.lookups: list[str] = []

        async def lookup(user_id: str, run_id: str) -> dict[str, Any] | None:
            self.lookups.append(run_id)
            return ack_of(run_id, "from-lookup") if user_id == USER else None

        self.connection = Connection(
            self.sink,  # type: ignore[arg-type]
            user_id=USER,
            session_id=new_id("ses"),
            connection_id=new_id("con"),
            log=self.log,
            metrics=Metrics(AgentExecutionTracker()),
            queue_size=1000,
            ack_lookup=lookup,
        )

    async def log_events(self, run_id: str, last_seq: int, *, ended: bool = False) -> None:
        for seq in range(1, last_seq + 1):
            await self.log.append(event(run_id, seq, last=ended and seq == last_seq))

    async def feed(self, *items: Outgoing) -> None:
        for item in (*items, END):
            self.connection.send(item)
        writer = asyncio.create_task(self.connection.writer())
        try:
            await asyncio.wait_for(self.sink.drained.wait(), 5)
        finally:
            writer.cancel()

    def seen(self, run_id: str) -> list[int | str]:
        """What the client saw of ``run_id``: "ack" or each event's seq, in order."""
        return [
            "ack" if f["type"] == "ack" else f["seq"]
            for f in self.sink.frames
            if f.get("run_id") == run_id
        ]


async def test_a_resume_never_repeats_what_this_socket_already_sent() -> None:
    # R2: the run started between the socket's subscription and its resume frame.
    h, run = Harness(), new_id("run")
    await h.log_events(run, 7)
    live = [event(run, seq) for seq in range(1, 8)]
    await h.feed(*live, Resume(run, 0), event(run, 8, last=True))
    await h.log.append(event(run, 8, last=True))
    assert h.seen(run) == ["ack", 1, 2, 3, 4, 5, 6, 7, 8]


async def test_a_resume_replays_from_the_clients_position_when_it_is_further() -> None:
    # The ack rule holds for a resume too: the socket starts to see the run, so its ack
    # comes first (before, a resumed run's events came with no ack).
    h, run = Harness(), new_id("run")
    await h.log_events(run, 9, ended=True)
    await h.feed(Resume(run, 4), event(run, 3), event(run, 9, last=True))
    assert h.seen(run) == ["ack", 5, 6, 7, 8, 9]


async def test_a_resume_of_a_run_this_socket_follows_sends_no_second_ack() -> None:
    h, run = Harness(), new_id("run")
    await h.log_events(run, 5)
    await h.feed(event(run, 1), event(run, 2), Resume(run, 0), event(run, 5))
    assert h.seen(run) == ["ack", 1, 2, 3, 4, 5]
    assert h.lookups == [run]


async def test_events_of_a_run_without_an_ack_here_are_preceded_by_its_ack() -> None:
    # R3: the ack was lost with the old socket; the run streams on this one.
    h, run = Harness(), new_id("run")
    await h.log_events(run, 3)
    resend = Ack(ack_of(run, "c1"), run, catch_up=True)
    await h.feed(event(run, 1), event(run, 2), resend, event(run, 3))
    assert h.seen(run) == ["ack", 1, 2, "ack", 3]
    assert h.sink.frames[0]["client_id"] == "from-lookup"
    assert h.lookups == [run]


async def test_a_resend_ack_catches_up_from_the_log_before_live_events() -> None:
    h, run = Harness(), new_id("run")
    await h.log_events(run, 5)
    # The run's first events were published before this socket existed.
    await h.feed(event(run, 5), Ack(ack_of(run, "c1"), run, catch_up=True), event(run, 6))
    await h.log.append(event(run, 6))
    assert h.seen(run) == ["ack", 1, 2, 3, 4, 5, 6]
    assert h.lookups == []


async def test_the_ack_of_a_submitted_run_comes_before_its_first_event() -> None:
    h, run = Harness(), new_id("run")
    await h.log_events(run, 2)
    await h.feed(Ack(ack_of(run, "c1"), run, catch_up=False), event(run, 1), event(run, 2))
    assert h.seen(run) == ["ack", 1, 2]
    assert h.lookups == []


async def test_a_gap_in_live_events_is_filled_from_the_log_once() -> None:
    h, run = Harness(), new_id("run")
    await h.log_events(run, 6, ended=True)
    await h.feed(event(run, 1), event(run, 4), event(run, 3), event(run, 6, last=True), Resync())
    assert h.seen(run) == ["ack", 1, 2, 3, 4, 5, 6]


async def test_an_ended_run_is_not_written_again_by_late_duplicates_or_resumes() -> None:
    h, run = Harness(), new_id("run")
    await h.log_events(run, 1, ended=True)
    only = event(run, 1, last=True)
    await h.feed(only, only, Resume(run, 0), Resync(), only)
    assert h.seen(run) == ["ack", 1]
    assert run not in h.connection._following  # a finished run holds no cursor


async def test_another_users_event_is_never_written() -> None:
    h, run = Harness(), new_id("run")
    await h.feed(event(run, 1, user_id=new_id("usr")))
    assert h.sink.frames == []
    assert h.lookups == []


async def test_a_run_seen_first_past_seq_1_is_left_to_the_client_to_resume() -> None:
    h, run = Harness(), new_id("run")
    await h.log_events(run, 4)
    await h.feed(event(run, 4))
    assert h.seen(run) == []


def test_only_real_disconnects_count_as_the_client_leaving() -> None:
    from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected
    from uvicorn.protocols.utils import ClientDisconnected

    from atoll.server.websocket import _is_disconnect

    assert _is_disconnect(WebSocketDisconnect(1006))
    assert _is_disconnect(WebSocketDisconnected('Cannot call "send" once a close message'))
    assert _is_disconnect(ClientDisconnected())
    assert _is_disconnect(ConnectionResetError())
    assert not _is_disconnect(RuntimeError("a bug of ours"))  # logged, closed with 1011
    assert not _is_disconnect(asyncio.CancelledError())
