"""Fixtures of the integration tests: a migrated, started database on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from atoll.store.db import Database, sqlite_url

from postgres import create_database, postgres_server


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated, started database; PostgreSQL (started once per module) only when the
    test runs on it, so the SQLite tier starts no server."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path)
    else:
        url = await asyncio.to_thread(create_database, request.getfixturevalue("postgres"))
    db = Database(url)
    await db.upgrade()
    db.start()
    yield db
    await db.dispose()
