"""The run event log in the database.

Appends go through the database's one writer, which commits everything that
arrived while its previous transaction was committing in a single transaction
(group commit) and only then resolves the appenders, who then publish. So
"logged before pushed" holds without one commit per event.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from atoll.runtime.events import RunEvent
from atoll.store.db import Database
from atoll.store.models import RunEventRow


class DatabaseRunEventLog:
    """``RunEventLog`` on the database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(self, event: RunEvent) -> None:
        """Store ``event`` in the next group commit; returns once it is committed.

        Cancelling the caller does not withdraw the event: it is still written.
        """
        row = RunEventRow(
            run_id=event.run_id,
            seq=event.seq,
            user_id=event.user_id,
            type=event.type.value,
            payload=event.payload,
            created_at=datetime.now(UTC),
        )

        def insert(session: Session) -> None:
            session.add(row)

        await self._db.write(insert)

    async def read(self, run_id: str, *, user_id: str, after: int = 0) -> list[RunEvent]:
        """The run's events with ``seq > after``, oldest first; none for another user."""
        query = (
            select(RunEventRow.payload)
            .where(
                RunEventRow.run_id == run_id,
                RunEventRow.user_id == user_id,
                RunEventRow.seq > after,
            )
            .order_by(RunEventRow.seq)
        )
        async with self._db.engine.connect() as connection:
            payloads = (await connection.execute(query)).scalars().all()
        return [RunEvent.from_payload(bytes(p), user_id=user_id) for p in payloads]

    async def prune(self, retention: timedelta) -> int:
        """Delete events older than ``retention``."""
        cutoff = datetime.now(UTC) - retention

        def prune(session: Session) -> int:
            result = session.execute(delete(RunEventRow).where(RunEventRow.created_at < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)

        return await self._db.write(prune)
