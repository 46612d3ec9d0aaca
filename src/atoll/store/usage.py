"""Model tokens counted per user and per organisation, by calendar month (UTC).

A run's tokens are added when it ends (whatever the ending: a failed run spent
what it spent), in one upsert per owner, so concurrent ends on several workers
add up exactly. The organisation counted is the user's at that moment.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from atoll.runtime.plans import Plan, Spent, month_of
from atoll.store.db import Database
from atoll.store.models import OrgMember, UsageCounter
from atoll.store.orgs import membership_in


def add_usage_in(session: Session, user_id: str, tokens: int, at: datetime) -> None:
    """Inside a write job: count ``tokens`` for ``user_id`` and their organisation."""
    if tokens <= 0:
        return
    owners = [user_id]
    member = membership_in(session, user_id)
    if member is not None:
        owners.append(member.org_id)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = cast(Table, UsageCounter.__table__)
    month = month_of(at)
    statement = insert(table).values(
        [{"owner_id": owner, "month": month, "tokens": tokens, "runs": 1} for owner in owners]
    )
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.owner_id, table.c.month],
        set_={
            "tokens": table.c.tokens + statement.excluded.tokens,
            "runs": table.c.runs + statement.excluded.runs,
        },
    )
    session.connection().execute(statement)


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
