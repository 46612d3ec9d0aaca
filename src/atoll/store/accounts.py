"""Accounts and their credentials: users, sessions, and the reads that authenticate a
session or an API key.

Every statement ``atoll.auth`` needs about them is here; the rules stay there — which
token matches which row, how long a spent refresh token is replayed, what an
organisation's refusal answers. Where a rule decides inside a transaction (a refresh
rotation, a new session checked against the sign-in policy), the caller passes the
rule in and the whole job stays one ``Database.write``, as it must: one conditional
UPDATE decides which of several racing refreshes rotates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, NoReturn, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from atoll.runtime.ids import new_id
from atoll.store.db import Database
from atoll.store.models import ApiKey, AuthSession, OrgMember, User, utcnow
from atoll.store.orgs import effective_plan, refusal_in, with_org
from atoll.store.writer import rows_changed

T = TypeVar("T")
CredentialT = TypeVar("CredentialT", AuthSession, ApiKey)
CHUNK = 500
"""Ids per ``IN (…)`` of ``AccountStore.credentials`` (well under every database's
parameter limit)."""


def chunked(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    """``ids`` in slices of at most ``CHUNK``."""
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


@dataclass(frozen=True, slots=True)
class PrincipalRows(Generic[CredentialT]):
    """A session or API key with its user, the plan they are on (their organisation's,
    else their own) and their current organisation."""

    credential: CredentialT
    user: User
    plan: str
    org_id: str | None
    org_role: str | None


@dataclass(frozen=True, slots=True)
class Credentials:
    """Sessions and API keys read by id (those found; a missing id has no entry)."""

    sessions: dict[str, AuthSession]
    keys: dict[str, ApiKey]


@dataclass(frozen=True, slots=True)
class RefreshSeen:
    """What a refresh found in its transaction once its conditional UPDATE ran
    (``AccountStore.rotate_refresh``), for the caller's rules to judge."""

    at: datetime
    """When the transaction ran (the caller's clock, read in it)."""
    refresh_jti: str
    access_jti: str
    """The ids the UPDATE gave the session (when it won)."""
    won: bool
    """The UPDATE changed the row: this refresh rotated the session, and no other can."""
    row: AuthSession | None
    """The session as it is now; None: there is none."""
    user: User | None
    """The session's user (None without a session)."""
    refusal: Callable[[], str | None]
    """Why the organisations governing the user now refuse the way the session began
    (None: they allow it); read when called, in the same transaction."""


RefreshJudge = Callable[[RefreshSeen], tuple[str | None, T]]
"""The caller's rules for one refresh: why to revoke the session (None: keep it), and
the answer ``rotate_refresh`` returns."""


class AccountStore:
    """Users and sessions (and, for authentication, API keys) of one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_user(self, user: User) -> bool:
        """Store a new account; False when its email is taken (the unique constraint)."""
        try:
            await self.db.write(lambda session: session.add(user))
        except IntegrityError:
            return False
        return True

    async def user_by_email(self, email: str) -> User | None:
        """The account with ``email`` (as stored: canonical), if any."""
        async with self.db.session() as session:
            return (await session.execute(select(User).where(User.email == email))).scalar()

    async def start_session(
        self, row: AuthSession, *, emails: list[str], refuse: Callable[[str], NoReturn]
    ) -> None:
        """Store a new session, unless the organisations governing its user (a member's, and
        those owning one of ``emails``) refuse the way it began: then ``refuse`` raises
        with their reason. The check and the insert are one transaction."""

        def start(session: Session) -> None:
            reason = refusal_in(session, row.user_id, emails, row.provider)
            if reason is not None:
                refuse(reason)
            session.add(row)

        await self.db.write(start)

    async def rotate_refresh(
        self,
        session_id: str,
        user_id: str,
        jti: str,
        *,
        clock: Callable[[], datetime],
        judge: RefreshJudge[T],
    ) -> T:
        """One refresh, in one transaction: a conditional UPDATE gives the session new token
        ids if ``jti`` is its current refresh token (of several racing refreshes, one wins);
        the row is read back; ``judge`` decides from what was seen whether the session is
        revoked (and why) and what to answer."""

        def rotate(session: Session) -> T:
            now = clock()
            fresh_refresh, fresh_access = new_id("ses"), new_id("req")
            won = rows_changed(
                session,
                update(AuthSession)
                .where(
                    AuthSession.id == session_id,
                    AuthSession.user_id == user_id,
                    AuthSession.refresh_jti == jti,
                    AuthSession.revoked_at.is_(None),
                )
                .values(
                    refresh_jti=fresh_refresh, previous_refresh_jti=jti, rotated_at=now,
                    access_jti=fresh_access,
                ),
            )  # fmt: skip
            row = session.execute(
                select(AuthSession).where(AuthSession.id == session_id)
                .execution_options(populate_existing=True)
            ).scalar()  # fmt: skip
            user = session.get(User, row.user_id) if row is not None else None

            def refusal() -> str | None:
                assert row is not None
                assert user is not None
                return refusal_in(session, user.id, [user.email], row.provider)

            seen = RefreshSeen(now, fresh_refresh, fresh_access, bool(won), row, user, refusal)
            reason, answer = judge(seen)
            if reason is not None and row is not None:
                row.revoked_at, row.revoked_reason = now, reason
            return answer

        return await self.db.write(rotate)

    async def revoke_session(self, session_id: str, reason: str) -> None:
        """End one session (if it is live; an ended one keeps the reason it ended with)."""

        def revoke(session: Session) -> None:
            row = session.get(AuthSession, session_id)
            if row is not None and row.revoked_at is None:
                row.revoked_at = utcnow()
                row.revoked_reason = reason

        await self.db.write(revoke)

    async def revoke_all_of(self, user_id: str, reason: str) -> list[str]:
        """End every live session and API key of ``user_id`` in one transaction; the ids of
        those ended (sessions first). A key revoked here stays revoked."""

        def revoke(session: Session) -> list[str]:
            now = utcnow()
            live = AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
            rows = session.execute(select(AuthSession).where(*live)).scalars().all()
            for row in rows:
                row.revoked_at, row.revoked_reason = now, reason
            live_keys = ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None)
            keys = session.execute(select(ApiKey).where(*live_keys)).scalars().all()
            for key in keys:
                key.revoked_at = now
            return [row.id for row in rows] + [key.id for key in keys]

        return await self.db.write(revoke)

    async def principal_rows(self, session_id: str) -> PrincipalRows[AuthSession] | None:
        """The session ``session_id`` with its user, plan and organisation, read now."""
        return await self._principal_rows(AuthSession, session_id)

    async def key_principal_rows(self, key_id: str) -> PrincipalRows[ApiKey] | None:
        """The API key ``key_id`` with its user, plan and organisation, read now."""
        return await self._principal_rows(ApiKey, key_id)

    async def _principal_rows(
        self, model: type[CredentialT], credential_id: str
    ) -> PrincipalRows[CredentialT] | None:
        query = with_org(
            select(model, User, effective_plan(), OrgMember.org_id, OrgMember.role)
            .join(User, User.id == model.user_id)
            .where(model.id == credential_id)
        )
        async with self.db.session() as session:
            found = (await session.execute(query)).first()
        if found is None:
            return None
        credential, user, plan, org_id, org_role = found
        return PrincipalRows(credential, user, plan, org_id, org_role)

    async def credentials(self, session_ids: Sequence[str], key_ids: Sequence[str]) -> Credentials:
        """The sessions and API keys with these ids, read now in one read session (in
        slices of ``CHUNK`` ids)."""
        sessions: dict[str, AuthSession] = {}
        keys: dict[str, ApiKey] = {}
        async with self.db.session() as session:
            for chunk in chunked(session_ids):
                found = select(AuthSession).where(AuthSession.id.in_(chunk))
                sessions.update((row.id, row) for row in (await session.execute(found)).scalars())
            for chunk in chunked(key_ids):
                found_keys = select(ApiKey).where(ApiKey.id.in_(chunk))
                keys.update((key.id, key) for key in (await session.execute(found_keys)).scalars())
        return Credentials(sessions, keys)
