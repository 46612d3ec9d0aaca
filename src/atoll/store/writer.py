"""The one writer of a database: jobs from every request batched into shared transactions.

Every write in Atoll is a *job*: a synchronous function that receives an ORM
``Session`` bound to the batch's transaction and returns a value. The writer
takes every job that arrived while the previous batch was committing, runs
them one after another in one transaction, commits once, and only then
answers each caller. A job that raises (an expected 404 or 409 as much as a
constraint violation) is rolled back alone and its caller gets the exception,
while the rest of the batch commits: such a batch runs again with each job in
its own SAVEPOINT (see ``BatchWriter._execute``). A job's exception is its
caller's to handle and is not logged here; only a batch the database could not
commit is.

On SQLite the writer has its own synchronous connection and runs each batch on
the event loop: a batch is one short WAL transaction (typically well under a
millisecond), and handing it to a thread cost more than it saved — under load
the thread and the loop convoy on the GIL (measured: docs/benchmarks.md).
Readers use the async engine in parallel (WAL). On other databases the batch
runs on an async connection through ``run_sync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, insert
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Executable

from atoll.store.faults import storage_fault

logger = logging.getLogger(__name__)

T = TypeVar("T")
WriteJob = Callable[[Session], T]


@dataclass(slots=True)
class _Pending(Generic[T]):
    job: WriteJob[T]
    done: asyncio.Future[T]
    prepare: Callable[[], None] | None = None


def insert_rows(session: Session, *rows: object) -> None:
    """INSERT mapped objects with Core statements (the ORM unit of work costs far more on the
    hot path); fills in autoincrement keys. The objects stay plain values, not session state."""
    connection = session.connection()
    for row in rows:
        mapper = sa_inspect(type(row))
        values = {
            attribute.columns[0].key: getattr(row, attribute.key)
            for attribute in mapper.column_attrs
            if getattr(row, attribute.key, None) is not None
        }
        # Values as parameters, not ``.values()``: the statement (and its compiled form)
        # is then the same for every row with the same columns.
        result = connection.execute(insert(mapper.local_table), values)
        for column, key in zip(mapper.primary_key, result.inserted_primary_key or (), strict=False):
            if key is not None:
                setattr(row, mapper.get_property_by_column(column).key, key)


def execute_core(session: Session, statement: Executable) -> None:
    """Run a Core statement on the batch's connection (no ORM bulk machinery)."""
    session.connection().execute(statement)


def rows_changed(session: Session, statement: Executable) -> int:
    """Run a Core UPDATE or DELETE on the batch's connection; how many rows it changed
    (a conditional UPDATE that changed one row won a race no one else can win)."""
    result = session.connection().execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


def _run_jobs(connection: Connection, jobs: list[WriteJob[Any]], *, isolate: bool) -> list[Any]:
    """Run ``jobs`` in one session on ``connection``: the results, or each job's exception.

    Not ``isolate``: the jobs run one after another and are flushed once (one INSERT per
    table for the whole batch); any error propagates. ``isolate``: each job runs in its
    own SAVEPOINT and is flushed before the next one starts, so an error is its job's
    alone (a lone job needs no SAVEPOINT: its error rolls back the transaction).
    """
    with Session(bind=connection, expire_on_commit=False, autoflush=True) as session:
        if not isolate or len(jobs) == 1:
            try:
                results = [job(session) for job in jobs]
                session.flush()
            except BaseException:
                # Roll back through the session, not only the connection: objects the
                # jobs added (and maybe flushed) turn transient again, so that running
                # the batch again INSERTs them instead of taking them for stored rows.
                session.rollback()
                raise
            return results
        outcomes: list[Any] = []
        for job in jobs:
            savepoint = session.begin_nested()
            try:
                outcome = job(session)
                session.flush()
            except Exception as exc:
                savepoint.rollback()
                outcomes.append(exc)
            else:
                savepoint.commit()
                outcomes.append(outcome)
        return outcomes


class BatchWriter:
    """Runs write jobs in batches; start with ``start()``, stop with ``aclose()``."""

    def __init__(
        self,
        *,
        sync_engine: Engine | None = None,
        async_engine: AsyncEngine | None = None,
        max_batch: int = 500,
    ) -> None:
        if (sync_engine is None) == (async_engine is None):
            raise ValueError("give exactly one of sync_engine and async_engine")
        self._sync_engine = sync_engine
        self._async_engine = async_engine
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending[Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.jobs = 0

    def start(self) -> None:
        """Start the writer task."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="atoll-db-writer")

    async def aclose(self) -> None:
        """Finish the queued jobs, then stop."""
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sync_engine is not None:
            self._sync_engine.dispose()

    async def write(self, job: WriteJob[T], *, prepare: Callable[[], None] | None = None) -> T:
        """Run ``job`` in the next batch and return its result (or raise its error).

        ``prepare`` runs on the event loop right before the batch is handed to the
        writer (e.g. to seal a buffer the job will write). Cancelling the caller
        does not withdraw the job: it still runs.
        """
        if self._task is None:
            raise RuntimeError("the database writer is not running")
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(job, done, prepare))
        # Awaited without a shield: a cancelled caller cancels only its own future, which
        # the writer then leaves alone; the job stays queued and runs all the same.
        return await done

    async def _loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            for pending in batch:
                if pending.prepare is not None:
                    pending.prepare()
            try:
                outcomes = await self._execute([p.job for p in batch])
            except Exception as exc:  # the database itself failed
                fault = storage_fault(exc)
                if fault is None:
                    logger.exception("a write batch of %d jobs failed", len(batch))
                else:  # expected while it lasts, and answered 503: no traceback per batch
                    logger.warning("a write batch of %d jobs failed: %s", len(batch), exc)
                outcomes = [exc] * len(batch)
            for pending, outcome in zip(batch, outcomes, strict=True):
                if not pending.done.done():
                    if isinstance(outcome, BaseException):
                        pending.done.set_exception(outcome)
                    else:
                        pending.done.set_result(outcome)
                self._queue.task_done()
            self.batches += 1
            self.jobs += len(batch)

    async def _execute(self, jobs: list[WriteJob[Any]]) -> list[Any]:
        """Run one batch in one committed transaction: each job's result or exception.

        The batch first runs as a whole (no SAVEPOINTs, one flush: what nearly every
        batch is). If anything in it raised, that transaction is rolled back and the
        batch runs once more with a SAVEPOINT per job, so the failing job fails alone
        and the rest commits together. SAVEPOINTs for every batch cost ~20 % of the
        Golden Path's throughput (docs/benchmarks.md). Raises only when the database
        failed the batch as a whole (a lone job's failure is that job's outcome).
        """
        if len(jobs) > 1:
            with contextlib.suppress(Exception):  # a job failed: isolate them, below
                return await self._transaction(jobs, isolate=False)
        try:
            return await self._transaction(jobs, isolate=True)
        except Exception as exc:
            if len(jobs) == 1:
                return [exc]
            raise

    async def _transaction(self, jobs: list[WriteJob[Any]], *, isolate: bool) -> list[Any]:
        if self._sync_engine is not None:
            with self._sync_engine.begin() as connection:
                return _run_jobs(connection, jobs, isolate=isolate)
        assert self._async_engine is not None
        async with self._async_engine.begin() as connection:
            return await connection.run_sync(_run_jobs, jobs, isolate=isolate)
