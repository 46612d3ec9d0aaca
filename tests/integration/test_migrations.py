"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from atoll.store.db import Database, sqlite_url
from atoll.store.models import Base

pytestmark = pytest.mark.integration


def differences(data: Path) -> list[object]:
    """What autogenerate would change between the database in ``data`` and the models."""
    engine = create_engine(f"sqlite:///{next(data.glob('*.db'))}")
    with engine.connect() as connection:
        found = list(compare_metadata(MigrationContext.configure(connection), Base.metadata))
    engine.dispose()
    return found


async def test_the_migrated_schema_matches_the_models(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    await db.upgrade()
    await db.dispose()
    assert await asyncio.to_thread(differences, tmp_path) == []
