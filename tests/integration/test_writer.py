"""The batching writer and pruning, on SQLite and PostgreSQL: one bad job fails alone.

A batch is made by queueing several jobs in the same loop turn (``gather``), which
is exactly what concurrent requests do.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from test_event_log import event

from atoll.errors import NotFoundError, ThreadBusyError
from atoll.store.db import Database
from atoll.store.event_log import DatabaseRunEventLog
from atoll.store.models import RunEventRow, User, utcnow
from atoll.store.writer import insert_rows

pytestmark = pytest.mark.integration


def add_user(email: str) -> object:
    def job(session: Session) -> str:
        user = User(id=f"usr_{email.split('@')[0]}", email=email, password_hash="x", roles=[])
        user.created_at = utcnow()
        insert_rows(session, user)
        return user.id

    return job


def fail_with(error: Exception) -> object:
    def job(session: Session) -> None:
        insert_rows(session, User(id="usr_never", email="never@x.io", password_hash="x", roles=[]))
        raise error

    return job


async def emails(database: Database) -> set[str]:
    async with database.session() as session:
        return set((await session.execute(select(User.email))).scalars())


async def test_a_failing_job_is_rolled_back_alone_and_the_batch_commits(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await database.write(add_user("taken@x.io"))  # type: ignore[arg-type]
    writer = database.writer
    batches = writer.batches
    with caplog.at_level(logging.WARNING):
        outcomes = await asyncio.gather(
            database.write(add_user("a@x.io")),  # type: ignore[arg-type]
            database.write(fail_with(NotFoundError("thread not found"))),  # type: ignore[arg-type]
            database.write(add_user("taken@x.io")),  # type: ignore[arg-type]  # unique email
            database.write(fail_with(ThreadBusyError("busy"))),  # type: ignore[arg-type]
            database.write(add_user("b@x.io")),  # type: ignore[arg-type]
            return_exceptions=True,
        )
    assert writer.batches == batches + 1  # one batch: one committed transaction for all five
    assert outcomes[0] == "usr_a" and outcomes[4] == "usr_b"
    assert isinstance(outcomes[1], NotFoundError)
    assert isinstance(outcomes[2], IntegrityError)
    assert isinstance(outcomes[3], ThreadBusyError)
    assert await emails(database) == {"taken@x.io", "a@x.io", "b@x.io"}  # no usr_never
    assert not [r for r in caplog.records if r.name.startswith("atoll")]  # expected: not logged


async def test_a_lone_failing_job_leaves_nothing_behind(database: Database) -> None:
    with pytest.raises(NotFoundError):
        await database.write(fail_with(NotFoundError("gone")))  # type: ignore[arg-type]
    assert "never@x.io" not in await emails(database)
    assert await database.write(add_user("after@x.io")) == "usr_after"  # type: ignore[arg-type]


async def test_pruning_deletes_in_bounded_chunks_and_keeps_recent_events(
    database: Database,
) -> None:
    log = DatabaseRunEventLog(database)
    old = [event("run_old", seq, "x") for seq in range(1, 2501)]
    await asyncio.gather(*(log.append(e) for e in old))
    await asyncio.gather(*(log.append(event("run_new", seq, "y")) for seq in range(1, 11)))
    stale = datetime.now(UTC) - timedelta(days=3)
    statement = update(RunEventRow).where(RunEventRow.run_id == "run_old").values(created_at=stale)
    await database.write(lambda session: session.execute(statement))
    jobs = database.writer.jobs
    assert await log.prune(timedelta(days=1), chunk=1000) == 2500
    assert database.writer.jobs - jobs == 3  # 1000 + 1000 + 500, each its own job
    async with database.session() as session:
        count = select(RunEventRow.run_id, func.count()).group_by(RunEventRow.run_id)
        assert dict((await session.execute(count)).all()) == {"run_new": 10}


async def test_an_object_added_by_a_job_is_stored_when_its_batch_runs_again(
    database: Database,
) -> None:
    """A batch in which a job failed runs again (each job in a SAVEPOINT); an ORM object
    another job added — and the first attempt already flushed — must be inserted then,
    not taken for a row that exists (auth adds pre-built objects this way)."""
    user = User(id="usr_prebuilt", email="prebuilt@x.io", password_hash="x", roles=[])

    def flush_then_fail(session: Session) -> None:
        session.execute(select(User.id))  # autoflush: the prebuilt user is INSERTed here
        raise ThreadBusyError("busy")

    added, failed = await asyncio.gather(
        database.write(lambda session: session.add(user)),
        database.write(flush_then_fail),
        return_exceptions=True,
    )
    assert added is None and isinstance(failed, ThreadBusyError)
    assert "prebuilt@x.io" in await emails(database)


async def test_events_appended_in_a_batch_store_created_at_as_the_orm_does(
    database: Database,
) -> None:
    """The SQLite hot path inserts events without SQLAlchemy's binding: their ``created_at``
    must still read back as an aware UTC time, be stored in the ORM's own format (pruning
    compares it with the ORM's cutoff), and prune like any other row."""
    log = DatabaseRunEventLog(database)
    before = datetime.now(UTC)
    await asyncio.gather(*(log.append(event("run_fmt", seq, "y")) for seq in range(1, 4)))
    orm_row = RunEventRow(
        run_id="run_orm", seq=1, user_id="y", type="agent_started", payload=b"{}",
        created_at=datetime.now(UTC),
    )  # fmt: skip
    await database.write(lambda session: session.add(orm_row))
    async with database.session() as session:
        stamps = (await session.execute(select(RunEventRow.created_at))).scalars().all()
    assert len(stamps) == 4
    for stamp in stamps:
        assert stamp.tzinfo is not None
        assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC)
    if database.is_sqlite:
        async with database.engine.connect() as connection:
            raw = (await connection.exec_driver_sql("SELECT created_at FROM run_events")).all()
        shapes = {len(text) for (text,) in raw}
        assert shapes == {len("2026-12-01 14:46:08.374564")}, raw
    assert await log.prune(timedelta(seconds=0)) == 4


async def test_a_write_whose_caller_is_cancelled_still_runs(database: Database) -> None:
    """A socket that closes mid-request cancels its handler; what it asked to store is
    stored anyway, and the writer goes on with the next jobs."""
    cancelled = asyncio.create_task(database.write(add_user("cancelled@x.io")))
    await asyncio.sleep(0)  # queued
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await database.write(add_user("after@x.io")) == "usr_after"
    assert {"cancelled@x.io", "after@x.io"} <= await emails(database)
