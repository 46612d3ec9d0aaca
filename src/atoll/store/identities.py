"""Signing in with an OpenID Provider, as stored: the sign-ins in progress (by the hash of
their state), the one-time codes a finished sign-in hands to the page, and the provider
accounts (identities) linked to users.

``atoll.auth.signin`` holds the flow and its rules (who may link what, which email is
trusted, what a refusal answers); the statements are here. The account a sign-in
resolves to is decided in one transaction: the caller's job gets ``SignInRecords``,
the named reads and writes it may make in it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from atoll.errors import NotFoundError
from atoll.store.db import Database
from atoll.store.models import Identity, LoginCode, OIDCLogin, Org, OrgMember, User, utcnow
from atoll.store.orgs import org_of_domain_in, refusal_in
from atoll.store.writer import rows_changed

T = TypeVar("T")


class SignInRecords:
    """The reads and writes of one sign-in's account resolution, all in the transaction
    of ``IdentityStore.resolve``."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def identity(self, issuer: str, subject: str) -> Identity | None:
        """The identity a provider's issuer and subject name, if it is linked."""
        query = select(Identity).where(Identity.issuer == issuer, Identity.subject == subject)
        return self._session.execute(query).scalar()

    def touch(self, identity: Identity, *, email: str | None, at: datetime) -> None:
        """Record a sign-in with ``identity``: when, and the email the provider gave now."""
        identity.last_used_at, identity.email = at, email

    def add_identity(self, identity: Identity) -> None:
        """Link a new identity."""
        self._session.add(identity)

    def user(self, user_id: str) -> User | None:
        """The account ``user_id``, if it exists."""
        return self._session.get(User, user_id)

    def user_by_email(self, email: str) -> User | None:
        """The account with ``email`` (as stored), if any."""
        return self._session.execute(select(User).where(User.email == email)).scalar()

    def add_user(self, user: User) -> None:
        """Store a new account now (flushed: what follows may refer to it)."""
        self._session.add(user)
        self._session.flush()

    def member(self, user_id: str) -> OrgMember | None:
        """The user's membership, removed or not, if they have one."""
        return self._session.get(OrgMember, user_id)

    def add_member(self, member: OrgMember) -> None:
        """Make the user a member of an organisation."""
        self._session.add(member)

    def refusal(self, user_id: str, emails: Iterable[str], provider: str | None) -> str | None:
        """Why the organisations governing this sign-in refuse it (``refusal_in``); None
        when they all allow it."""
        return refusal_in(self._session, user_id, emails, provider)

    def org_of_domain(self, email: str) -> Org | None:
        """The organisation that owns ``email``'s domain, if any."""
        return org_of_domain_in(self._session, email)


class IdentityStore:
    """Sign-ins in progress, one-time codes and linked identities of one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def begin(self, row: OIDCLogin, *, ttl: timedelta) -> None:
        """Store a sign-in just started, forgetting those started more than ``ttl`` ago (nobody
        finished them), in one transaction."""

        def store(session: Session) -> None:
            cutoff = utcnow() - ttl
            session.execute(delete(OIDCLogin).where(OIDCLogin.created_at < cutoff))
            session.add(row)

        await self.db.write(store)

    async def spend_state(
        self, state_hash: str, provider: str, browser_hash: str, *, ttl: timedelta
    ) -> OIDCLogin | None:
        """The sign-in started through ``provider`` with this state by this browser, less than
        ``ttl`` ago and never spent, spent now; None when there is none. One conditional
        UPDATE: of two racing callbacks, one gets it."""

        def spend(session: Session) -> OIDCLogin | None:
            now = utcnow()
            spent = rows_changed(
                session,
                update(OIDCLogin)
                .where(
                    OIDCLogin.state_hash == state_hash,
                    OIDCLogin.provider == provider,
                    OIDCLogin.browser_hash == browser_hash,
                    OIDCLogin.used_at.is_(None),
                    OIDCLogin.created_at > now - ttl,
                )
                .values(used_at=now),
            )
            if not spent:
                return None
            return session.get(OIDCLogin, state_hash)

        return await self.db.write(spend)

    async def add_code(self, row: LoginCode) -> None:
        """Store the one-time code of a finished sign-in."""
        await self.db.write(lambda session: session.add(row))

    async def spend_code(
        self, code_hash: str, browser_hash: str, *, ttl: timedelta
    ) -> tuple[User, str | None] | None:
        """The user of the one-time code made for this browser less than ``ttl`` ago and never
        spent, and the provider they signed in with; the code is spent now. None when there
        is none. One conditional UPDATE: of two racing exchanges, one wins."""

        def spend(session: Session) -> tuple[User, str | None] | None:
            now = utcnow()
            spent = rows_changed(
                session,
                update(LoginCode)
                .where(
                    LoginCode.code_hash == code_hash,
                    LoginCode.browser_hash == browser_hash,
                    LoginCode.used_at.is_(None),
                    LoginCode.created_at > now - ttl,
                )
                .values(used_at=now),
            )
            if not spent:
                return None
            row = session.get(LoginCode, code_hash)
            user = session.get(User, row.user_id) if row is not None else None
            return (user, row.provider) if row is not None and user is not None else None

        return await self.db.write(spend)

    async def resolve(self, job: Callable[[SignInRecords], T]) -> T:
        """Run ``job`` — the rules that find, link or make the account a sign-in is for — in
        one transaction, with the reads and writes it may make there."""
        return await self.db.write(lambda session: job(SignInRecords(session)))

    async def of_user(self, user_id: str) -> list[Identity]:
        """The identities linked to ``user_id``'s account, oldest first."""
        query = select(Identity).where(Identity.user_id == user_id).order_by(Identity.pk)
        async with self.db.session() as session:
            return list((await session.execute(query)).scalars().all())

    async def ways_in(self, user_id: str) -> tuple[User | None, set[str]]:
        """The account ``user_id`` (None: there is none) and the providers of its identities."""
        async with self.db.session() as session:
            user = await session.get(User, user_id)
            linked = (
                await session.execute(select(Identity.provider).where(Identity.user_id == user_id))
            ).scalars()
            return user, set(linked)

    async def unlink(
        self, user_id: str, identity_pk: int, *, check: Callable[[User | None, bool], None]
    ) -> str:
        """Remove one of the user's identities (``NotFoundError`` for another user's, or
        none), after ``check`` — given the account and whether it has other identities —
        had its say (it raises to keep it), in one transaction; the identity's provider."""

        def remove(session: Session) -> str:
            row = session.get(Identity, identity_pk)
            if row is None or row.user_id != user_id:
                raise NotFoundError("identity not found")
            user = session.get(User, user_id)
            others = session.execute(
                select(Identity.pk).where(Identity.user_id == user_id, Identity.pk != identity_pk)
            ).first()
            check(user, others is not None)
            session.delete(row)
            return row.provider

        return await self.db.write(remove)
