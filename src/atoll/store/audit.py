"""The audit log of security-relevant actions."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from atoll.ratelimit import LocalRateLimiter
from atoll.store.db import Database
from atoll.store.models import AuditEntry, utcnow
from atoll.store.writer import insert_rows

logger = logging.getLogger(__name__)

AUDITED_ACTIONS = frozenset(
    {
        "register",
        "login",
        "login_failed",
        "login_rate_limited",
        "refresh",
        "refresh_reuse",
        "logout",
        "run_start",
        "run_cancel",
        "access_denied",
        "sign_in",
        "sign_in_failed",
        "login_refused_sso",
        "identity_linked",
        "identity_unlinked",
        "org_joined",
        "org_member_removed",
        "org_member_restored",
        "org_created",
        "key_created",
        "key_revoked",
        "org_sso_changed",
        "login_refused_removed",
        "org_role_changed",
        "org_plan_changed",
        "org_providers_changed",
        "org_domain_added",
    }
)


def audit_entry(action: str, *, user_id: str | None = None, **detail: Any) -> AuditEntry:
    """A new audit entry (for write jobs that audit in their own transaction)."""
    if action not in AUDITED_ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    return AuditEntry(at=utcnow(), action=action, user_id=user_id, detail=detail)


class AuditLog:
    """Writes audit entries; never lets a failure to audit break the request."""

    def __init__(self, db: Database, *, sampled_per_minute: int = 10) -> None:
        self._db = db
        self._sampler = LocalRateLimiter(sampled_per_minute, 60.0)
        self.suppressed = 0
        """Entries ``record_sampled`` did not write (over their rate)."""

    async def record_sampled(
        self, action: str, *, key: str, user_id: str | None = None, **detail: Any
    ) -> None:
        """``record``, at most ``sampled_per_minute`` times a minute per ``(action, key)``.

        For what anyone can repeat at will — a refused token, a rate-limited login —
        so that it cannot be used to fill the disk; ``key`` is the client address.
        The entries left out are counted in ``suppressed``.
        """
        if self._sampler.hit_now(f"{action}:{key}") is not None:
            self.suppressed += 1
            return
        await self.record(action, user_id=user_id, address=key, **detail)

    async def record(self, action: str, *, user_id: str | None = None, **detail: Any) -> None:
        """Store one entry (``action`` must be one of ``AUDITED_ACTIONS``)."""
        entry = audit_entry(action, user_id=user_id, **detail)
        try:
            await self._db.write(lambda session: insert_rows(session, entry))
        except Exception:
            logger.exception("could not write audit entry %s for %s", action, user_id)

    async def entries(self, *, user_id: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest entries (optionally of one user)."""
        query = select(AuditEntry).order_by(AuditEntry.pk.desc()).limit(limit)
        if user_id is not None:
            query = query.where(AuditEntry.user_id == user_id)
        async with self._db.session() as session:
            return list((await session.execute(query)).scalars().all())
