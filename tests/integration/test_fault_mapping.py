"""Faults of the storage become typed errors where every read and write passes, and the
schema revision is checked before anything reads the database.

Real drivers throughout: SQLite told it may not grow (``PRAGMA max_page_count``) answers
exactly what a full disk answers ("database or disk is full"), and a PostgreSQL URL on a
port nobody listens on is refused as a stopped server is.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from atoll.errors import DatabaseTooNewError, StorageFullError, UnavailableError
from atoll.store.db import Database, alembic_config, head_revision, migrations, sqlite_url
from atoll.store.faults import storage_fault

from disks import small_disk
from ports import free_port
from postgres import create_database, postgres_process

pytestmark = pytest.mark.integration


def sqlite_full_error(path: Path) -> OperationalError:
    """What SQLAlchemy raises when SQLite cannot grow its file."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (x BLOB)"))
        with engine.begin() as connection:
            connection.execute(text("PRAGMA max_page_count = 2"))
            connection.execute(text("INSERT INTO t VALUES (randomblob(100000))"))
    except OperationalError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("SQLite grew past max_page_count")


async def test_driver_errors_become_typed_errors(tmp_path: Path) -> None:
    full = sqlite_full_error(tmp_path / "full.db")
    assert "database or disk is full" in str(full)
    assert isinstance(storage_fault(full), StorageFullError)
    assert isinstance(storage_fault(full.orig), StorageFullError)  # the bare sqlite3 error

    refused_url = f"postgresql+asyncpg://atoll@127.0.0.1:{free_port()}/atoll"
    engine = create_async_engine(refused_url)
    with pytest.raises(ConnectionRefusedError) as refused:
        async with engine.connect():
            pass
    await engine.dispose()
    fault = storage_fault(refused.value)
    assert type(fault) is UnavailableError
    assert fault.code == "unavailable"

    with pytest.raises(sqlite3.OperationalError) as missing:
        sqlite3.connect(":memory:").execute("SELECT * FROM no_such_table")
    assert storage_fault(missing.value) is None  # a bug, not the storage: stays a 500
    assert storage_fault(ValueError("no")) is None


async def test_a_full_database_refuses_writes_as_storage_full_and_still_reads(
    tmp_path: Path,
) -> None:
    db = Database(sqlite_url(tmp_path))
    await db.upgrade()
    db.start()
    try:

        def grow_past_the_limit(session: Session) -> None:
            pages = session.execute(text("PRAGMA page_count")).scalar()
            session.execute(text(f"PRAGMA max_page_count = {pages}"))
            session.execute(text("CREATE TABLE IF NOT EXISTS ballast (x BLOB)"))
            session.execute(text("INSERT INTO ballast VALUES (randomblob(1000000))"))

        with pytest.raises(StorageFullError) as refused:
            await db.write(grow_past_the_limit)
        assert refused.value.status == 503 and refused.value.retry_after
        async with db.session() as session:  # reads are served
            assert (await session.execute(text("SELECT count(*) FROM users"))).scalar() == 0

        def lift_the_limit(session: Session) -> None:
            session.execute(text("PRAGMA max_page_count = 1073741823"))

        await db.write(lift_the_limit)
        await db.write(_insert_user)
        assert await db.health() == "ok"
    finally:
        await db.dispose()


def _insert_user(session: Session) -> None:
    session.execute(
        text(
            "INSERT INTO users (id, email, password_hash, plan, roles, created_at) "
            "VALUES ('usr_x', 'x@example.com', '!', 'free', '[]', CURRENT_TIMESTAMP)"
        )
    )


async def test_a_constraint_stays_what_it_is(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    await db.upgrade()
    db.start()
    try:
        await db.write(_insert_user)
        with pytest.raises(IntegrityError):
            await db.write(_insert_user)
    finally:
        await db.dispose()


async def test_upgrade_says_what_it_applied(tmp_path: Path) -> None:
    from alembic import command

    engine = create_engine(sqlite_url(tmp_path).replace("+aiosqlite", ""))
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0007")
    engine.dispose()
    head = head_revision()
    newer = [m.revision for m in migrations() if m.revision > "0007"]
    db = Database(sqlite_url(tmp_path))
    try:
        done = await db.upgrade()
        assert (done.before, done.after, done.applied) == ("0007", head, tuple(newer))
        again = await db.upgrade()
        assert (again.before, again.after, again.applied) == (head, head, ())
        assert await db.revision() == head
    finally:
        await db.dispose()


async def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    try:
        await db.upgrade()
        async with db.engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = '0999'"))
        with pytest.raises(DatabaseTooNewError) as refused:
            await db.upgrade()
    finally:
        await db.dispose()
    assert refused.value.message == (
        f"the database is at revision 0999, newer than this Atoll (knows up to "
        f"{head_revision()}): upgrade Atoll"
    )


async def test_a_postgresql_that_never_answers_is_unavailable_not_a_hang() -> None:
    """A partition looks like a server that accepts and then says nothing: the connection
    attempt gives up (``CONNECT_TIMEOUT``) and the read is ``unavailable``."""
    silent: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)  # kept open, never answered

    listener = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    db = Database(f"postgresql+asyncpg://atoll@127.0.0.1:{port}/atoll")
    try:
        with pytest.raises(UnavailableError):
            async with db.session() as session:
                await session.execute(text("SELECT 1"))
    finally:
        await db.dispose()
        for writer in silent:
            writer.close()
        listener.close()
        await listener.wait_closed()


BALLAST = (
    "INSERT INTO ballast SELECT decode(string_agg(md5(random()::text), ''), 'hex') "
    "FROM generate_series(1, 4096)"
)
"""64 KiB of random bytes (stored as they are: the column is ``STORAGE EXTERNAL``)."""


def add_ballast(session: Session) -> None:
    session.execute(text(BALLAST))


async def test_a_full_postgresql_disk_refuses_writes_as_storage_full() -> None:
    """PostgreSQL's own words for a full disk — ``could not extend file … No space left on
    device`` (SQLSTATE 53100) — from a table in a tablespace on a 1 MiB tmpfs, while the
    server itself (and its WAL) has room and goes on."""
    with (
        postgres_process() as postgres,
        small_disk(postgres.root / "tablespace", 1, owner="postgres") as disk,
    ):
        url = await asyncio.to_thread(create_database, postgres.url)
        ddl = create_async_engine(url, isolation_level="AUTOCOMMIT")
        async with ddl.connect() as connection:
            await connection.execute(text(f"CREATE TABLESPACE small LOCATION '{disk}'"))
            await connection.execute(text("CREATE TABLE ballast (x bytea) TABLESPACE small"))
            await connection.execute(text("ALTER TABLE ballast ALTER x SET STORAGE EXTERNAL"))
        await ddl.dispose()
        db = Database(url)
        await db.upgrade()
        db.start()

        async def fill_the_table() -> None:
            for _ in range(1_000):  # 64 KiB each, into 1 MiB
                await db.write(add_ballast)

        try:
            with pytest.raises(StorageFullError) as refused:
                await fill_the_table()
            assert "could not extend file" in str(refused.value.__cause__)
            async with db.session() as session:  # reads are served
                assert (await session.execute(text("SELECT count(*) FROM ballast"))).scalar()
            assert await db.health() == "storage_full"
            await db.write(_insert_user)  # elsewhere there is room: only that table was full
        finally:
            await db.dispose()
            postgres.stop()  # before the tmpfs is unmounted: it holds the table's files
