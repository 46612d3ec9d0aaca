"""A user's personal API keys: made, listed, revoked (``atoll.auth.keys`` holds the rules:
the key's shape, its digest, how many a user may have)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from atoll.store.db import Database
from atoll.store.models import ApiKey, utcnow
from atoll.store.writer import rows_changed


class ApiKeyStore:
    """The API keys of one database, always scoped to their owner."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, row: ApiKey, *, limit: int, refuse: Callable[[], NoReturn]) -> None:
        """Store a new key, unless its owner has ``limit`` live keys already: then ``refuse``
        raises. The count and the insert are one transaction."""

        def add(session: Session) -> None:
            live = select(func.count()).where(
                ApiKey.user_id == row.user_id, ApiKey.revoked_at.is_(None)
            )
            if session.execute(live).scalar_one() >= limit:
                refuse()
            session.add(row)

        await self.db.write(add)

    async def live(self, user_id: str) -> list[ApiKey]:
        """The user's keys that are not revoked, newest first."""
        query = (
            select(ApiKey)
            .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.created_at.desc())
        )
        async with self.db.session() as session:
            return list((await session.execute(query)).scalars().all())

    async def revoke(self, user_id: str, key_id: str) -> bool:
        """Revoke one of the user's live keys; False when they have no such key."""
        statement = (
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        return bool(await self.db.write(lambda session: rows_changed(session, statement)))
