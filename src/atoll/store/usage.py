"""Model tokens counted per user and per organisation, by calendar month (UTC).

A run's tokens are added as it ends, before it gives its slot back (whatever the
ending: a failed run spent what it spent), in one upsert for the user and their
organisation, so concurrent ends on several workers add up exactly. The
organisation counted is the user's at that moment.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from atoll.runtime.plans import Plan, Spent, month_of
from atoll.store.db import Database
from atoll.store.models import OrgMember, UsageCounter


def _upsert(insert: Callable[[Table], Any]) -> Any:
    table = cast(Table, UsageCounter.__table__)
    statement = insert(table).values(
        owner_id=bindparam("owner"), month=bindparam("month"), tokens=bindparam("tokens"), runs=1
    )
    return statement.on_conflict_do_update(
        index_elements=[table.c.owner_id, table.c.month],
        set_={
            "tokens": table.c.tokens + statement.excluded.tokens,
            "runs": table.c.runs + statement.excluded.runs,
        },
    )


# Built once, like the statement a run ends with: a run's usage costs two statements.
_UPSERT_SQLITE = _upsert(sqlite.insert)
_UPSERT_POSTGRESQL = _upsert(postgresql.insert)
_MEMBER_ORG = select(OrgMember.org_id).where(
    OrgMember.user_id == bindparam("user"), OrgMember.removed_at.is_(None)
)


def add_usage_in(session: Session, user_id: str, tokens: int, at: datetime) -> None:
    """Inside a write job: count ``tokens`` for ``user_id`` and their organisation."""
    if tokens <= 0:
        return
    connection = session.connection()
    month = month_of(at)
    rows = [{"owner": user_id, "month": month, "tokens": tokens}]
    org_id = connection.execute(_MEMBER_ORG, {"user": user_id}).scalar()
    if org_id is not None:
        rows.append({"owner": org_id, "month": month, "tokens": tokens})
    postgres = connection.dialect.name == "postgresql"
    connection.execute(_UPSERT_POSTGRESQL if postgres else _UPSERT_SQLITE, rows)


class UsageStore:
    """Reads the counters."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def spent(self, user_id: str, at: datetime) -> Spent:
        """What the user and their organisation (if any) have counted in ``at``'s month."""
        member = select(OrgMember.org_id).where(
            OrgMember.user_id == user_id, OrgMember.removed_at.is_(None)
        )
        async with self.db.session() as session:
            org_id = (await session.execute(member)).scalar()
        owners = [user_id] if org_id is None else [user_id, org_id]
        counted = await self.totals(owners, at)
        return Spent(counted[user_id], counted[org_id] if org_id is not None else None)

    async def add(self, user_id: str, tokens: int, at: datetime) -> None:
        """Count ``tokens`` spent by ``user_id`` (and their organisation) at ``at``."""
        await self.db.write(lambda session: add_usage_in(session, user_id, tokens, at))

    async def check(self, user_id: str, plan: Plan, now: datetime) -> None:
        """Raise ``QuotaExceededError`` when a budget of ``plan`` is spent for the user (no
        read at all when the plan has no budget)."""
        if not plan.capped:
            return
        refusal = plan.refusal(await self.spent(user_id, now), now)
        if refusal is not None:
            raise refusal

    async def totals(self, owner_ids: list[str], at: datetime) -> dict[str, int]:
        """Tokens counted in ``at``'s month for each of ``owner_ids`` (0 when none)."""
        if not owner_ids:
            return {}
        query = select(UsageCounter.owner_id, UsageCounter.tokens).where(
            UsageCounter.month == month_of(at), UsageCounter.owner_id.in_(owner_ids)
        )
        async with self.db.session() as session:
            counted = dict((await session.execute(query)).all())
        return {owner: int(counted.get(owner, 0)) for owner in owner_ids}
