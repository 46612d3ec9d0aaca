"""The database event log: group commit, and a colliding event failing alone."""

from __future__ import annotations

import asyncio

import pytest

from atoll.errors import EventConflictError
from atoll.runtime.events import EventType, RunEvent
from atoll.store.db import Database
from atoll.store.event_log import DatabaseRunEventLog

pytestmark = pytest.mark.integration


def event(run: str, seq: int, text: str) -> RunEvent:
    return RunEvent.build(
        type=EventType.AGENT_THINKING, run_id=run, thread_id="thr_x", user_id="usr_x", seq=seq,
        agent="assistant", parent_agent=None, data={"text": text},
    )  # fmt: skip


async def test_a_colliding_event_fails_alone_and_its_batch_is_stored(database: Database) -> None:
    log = DatabaseRunEventLog(database)
    await asyncio.gather(log.append(event("run_a", 1, "a1")), log.append(event("run_b", 1, "b1")))
    batch = await asyncio.gather(
        log.append(event("run_a", 2, "a2")),
        log.append(event("run_b", 1, "b1 again, from a worker presumed dead")),
        log.append(event("run_c", 1, "c1")),
        return_exceptions=True,
    )
    assert batch[0] is None and batch[2] is None
    assert isinstance(batch[1], EventConflictError)
    assert batch[1].code == "event_conflict"
    read = {run: await log.read(run, user_id="usr_x") for run in ("run_a", "run_b", "run_c")}
    assert [e.data["text"] for e in read["run_a"]] == ["a1", "a2"]
    assert [e.data["text"] for e in read["run_b"]] == ["b1"]  # the first one stays
    assert [e.data["text"] for e in read["run_c"]] == ["c1"]


async def test_nothing_of_a_run_follows_its_end_once_a_conflict_fenced_it(
    database: Database,
) -> None:
    log = DatabaseRunEventLog(database)
    await log.append(event("run_z", 1, "z1"))
    ended_elsewhere = DatabaseRunEventLog(database)  # e.g. a sweeper: takes seq 2 for the end
    await ended_elsewhere.append(event("run_z", 2, "the end"))
    # The presumed-dead worker's next events, in one batch: 2 collides, 3 must not follow.
    batch = await asyncio.gather(
        log.append(event("run_z", 2, "z2")),
        log.append(event("run_z", 3, "z3")),
        log.append(event("run_ok", 1, "ok")),
        return_exceptions=True,
    )
    assert [type(outcome).__name__ for outcome in batch] == [
        "EventConflictError", "EventConflictError", "NoneType"
    ]  # fmt: skip
    with pytest.raises(EventConflictError):  # and later ones too
        await log.append(event("run_z", 4, "z4"))
    texts = [e.data["text"] for e in await log.read("run_z", user_id="usr_x")]
    assert texts == ["z1", "the end"]
    assert [e.data["text"] for e in await log.read("run_ok", user_id="usr_x")] == ["ok"]
