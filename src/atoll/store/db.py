"""The database: async engine, sessions, SQLite pragmas and Alembic migrations."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from atoll.store.writer import BatchWriter, T, WriteJob

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def sqlite_url(data_dir: Path) -> str:
    """The URL of the default SQLite file in ``data_dir``."""
    return f"sqlite+aiosqlite:///{(data_dir / 'atoll.db').resolve()}"


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

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        options: dict[str, Any] = {"echo": echo, "json_serializer": json_text}
        if not self.is_sqlite:
            options.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
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
        """Run a write job in the next batch; returns its result or raises its error."""
        return await self.writer.write(job, prepare=prepare)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for reads."""
        async with self.sessions() as session:
            yield session

    async def upgrade(self) -> None:
        """Apply every Alembic migration up to head."""
        async with self.engine.begin() as connection:
            await connection.run_sync(_upgrade)

    async def ping(self) -> bool:
        """True when the database answers."""
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

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


def _upgrade(connection: Connection) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), "head")
