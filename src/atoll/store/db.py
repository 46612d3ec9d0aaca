"""The database: async engine, sessions, SQLite pragmas, health and Alembic migrations.

Every read (``session``, ``connect``) and write (``write``) passes here, and a failure
of the storage itself — unreachable, restarting, a full disk — leaves as the typed
error ``atoll.store.faults.storage_fault`` names, so that every door answers 503 with a
stable code instead of 500.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from sqlalchemy import create_engine, event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from atoll.errors import DatabaseTooNewError, StorageFullError
from atoll.store.faults import storage_fault
from atoll.store.writer import BatchWriter, T, WriteJob

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

Health = Literal["ok", "unavailable", "storage_full"]
FULL_MEMORY = StorageFullError.retry_after or 30.0
"""PostgreSQL: seconds a write refused for lack of space keeps ``health`` at
``storage_full`` (the ``Retry-After`` its requests got)."""
CONNECT_TIMEOUT = 5.0
"""Seconds a new connection to PostgreSQL may take."""


SQLITE_FILE = "atoll.db"
"""The name of the default SQLite file in the data directory."""


def sqlite_url(data_dir: Path) -> str:
    """The URL of the default SQLite file in ``data_dir``."""
    return f"sqlite+aiosqlite:///{(data_dir / SQLITE_FILE).resolve()}"


def json_text(value: Any) -> str:
    """How JSON columns are written: orjson (several times faster than ``json.dumps`` on the
    hot path), or the standard library for what orjson refuses (integers beyond 64 bits,
    which metadata may hold); reading stays with the standard library."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer; NORMAL: a committed transaction survives a
    # killed process (not a power loss: use PostgreSQL for that, see docs/operations.md).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """Owns the engines, the read sessions and the one writer of one process.

    Reads use the async engine (in parallel). Every write is a job for the
    ``BatchWriter`` (``await db.write(job)``), which batches concurrent writes into
    shared transactions; call ``start()`` before writing and ``aclose()`` at the end.
    """

    def __init__(self, url: str, *, echo: bool = False, min_free_bytes: int = 0) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.min_free_bytes = min_free_bytes
        """SQLite: less free space than this on its file system is ``storage_full``."""
        self._refused_for_space_at: float | None = None
        """When a write last failed for lack of space (SQLite: until one commits again)."""
        options: dict[str, Any] = {"echo": echo, "json_serializer": json_text}
        if not self.is_sqlite:
            options.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        if make_url(url).get_driver_name() == "asyncpg":
            # A database that does not answer is refused within CONNECT_TIMEOUT (503
            # ``unavailable``) instead of holding every request for asyncpg's 60 s.
            options["connect_args"] = {"timeout": CONNECT_TIMEOUT}
        self.engine: AsyncEngine = create_async_engine(url, **options)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            # SQLite has one writer: a dedicated thread with its own connection.
            sync_engine = create_engine(
                url.replace("+aiosqlite", ""), echo=echo, json_serializer=json_text
            )
            event.listen(sync_engine, "connect", _sqlite_pragmas)
            self.writer = BatchWriter(sync_engine=sync_engine)
        else:
            self.writer = BatchWriter(async_engine=self.engine)

    def start(self) -> None:
        """Start the writer."""
        self.writer.start()

    async def write(self, job: WriteJob[T], *, prepare: Callable[[], None] | None = None) -> T:
        """Run a write job in the next batch; returns its result or raises its error (a
        fault of the storage as ``StorageFullError`` or ``UnavailableError``)."""
        try:
            result = await self.writer.write(job, prepare=prepare)
        except Exception as exc:
            fault = storage_fault(exc)
            if fault is None:
                raise
            if isinstance(fault, StorageFullError):
                self._refused_for_space_at = time.monotonic()
            raise fault from exc
        if self.is_sqlite:  # on SQLite every commit needed space; see ``health``
            self._refused_for_space_at = None
        return result

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for reads (a fault of the storage leaves as its typed error)."""
        try:
            async with self.sessions() as session:
                yield session
        except Exception as exc:
            fault = storage_fault(exc)
            if fault is None:
                raise
            raise fault from exc

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection for reads (a fault of the storage leaves as its typed error)."""
        try:
            async with self.engine.connect() as connection:
                yield connection
        except Exception as exc:
            fault = storage_fault(exc)
            if fault is None:
                raise
            raise fault from exc

    async def health(self) -> Health:
        """Whether a request that needs the database can be served: ``ok``, ``unavailable``
        (it does not answer) or ``storage_full`` (it answers but cannot write).

        A read must answer. SQLite: its file system must have ``min_free_bytes`` free, and
        after a write refused for lack of space a probe write must commit now (a node a
        load balancer took out of service gets no request whose write could tell).
        PostgreSQL: no write may have been refused for lack of space in the last
        ``FULL_MEMORY`` seconds — a probe cannot tell there (an update in place commits
        while an insert that needs a new page is refused), and the memory expires so that
        a node taken out of service is tried again.
        """
        try:
            async with self.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:
            fault = storage_fault(exc)
            return "storage_full" if isinstance(fault, StorageFullError) else "unavailable"
        if self.is_sqlite and self.free_bytes() < self.min_free_bytes:
            return "storage_full"
        refused_at = self._refused_for_space_at
        if refused_at is None:
            return "ok"
        if not self.is_sqlite:
            return "storage_full" if time.monotonic() - refused_at < FULL_MEMORY else "ok"
        try:
            await self.write(_touch)
        except StorageFullError:
            return "storage_full"
        except Exception:
            return "unavailable"
        return "ok"

    def free_bytes(self) -> int:
        """Free space (for this process) on the file system of the SQLite file."""
        database = make_url(self.url).database
        directory = Path(database).resolve().parent if database else Path.cwd()
        return shutil.disk_usage(directory).free

    async def ping(self) -> bool:
        """True when the database can serve requests (``health`` is ``ok``)."""
        return await self.health() == "ok"

    async def upgrade(self) -> Upgrade:
        """Apply every Alembic migration up to head; what was applied.

        Refuses (``DatabaseTooNewError``) a database at a revision this code does not
        know: a newer Atoll migrated it, and this one would misread it.
        """
        async with self.engine.begin() as connection:
            return await connection.run_sync(_upgrade)

    async def revision(self) -> str | None:
        """The database's Alembic revision (None: not migrated yet)."""
        async with self.connect() as connection:
            return await connection.run_sync(_current_revision)

    async def dispose(self) -> None:
        """Finish queued writes, stop the writer and close every pooled connection."""
        await self.writer.aclose()
        await self.engine.dispose()


def alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change this code knows: its revision and what it does."""

    revision: str
    description: str


@dataclass(frozen=True, slots=True)
class Upgrade:
    """What ``Database.upgrade`` did: from ``before`` (None: an empty database) to ``after``,
    applying ``applied`` (none: it was already at ``after``)."""

    before: str | None
    after: str
    applied: tuple[str, ...]


def migrations() -> list[Migration]:
    """Every migration this code knows, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    found = [
        Migration(item.revision, _summary(item.module.__doc__ or ""))
        for item in script.walk_revisions()
    ]
    return found[::-1]


def _summary(docstring: str) -> str:
    """A migration's docstring up to its ``Revision ID:`` line, on one line."""
    text = docstring.split("Revision ID:", 1)[0]
    return " ".join(text.split())


def head_revision() -> str:
    """The newest revision this code knows."""
    return migrations()[-1].revision


def check_known(revision: str | None) -> None:
    """Refuse a database at a revision this code does not know (a newer Atoll's)."""
    known = [m.revision for m in migrations()]
    if revision is not None and revision not in known:
        raise DatabaseTooNewError(revision, known[-1])


def _current_revision(connection: Connection) -> str | None:
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection) -> Upgrade:
    from alembic import command

    before = _current_revision(connection)
    check_known(before)
    known = [m.revision for m in migrations()]
    start = known.index(before) + 1 if before is not None else 0
    command.upgrade(alembic_config(connection), "head")
    return Upgrade(before, known[-1], tuple(known[start:]))


def _touch(session: Session) -> None:
    """A committed write that changes nothing: does the database accept writes again?"""
    session.connection().execute(text("UPDATE alembic_version SET version_num = version_num"))
