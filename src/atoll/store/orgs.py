"""Organisations: the email domains they own, their members, and their sign-in policy
(whether they require SSO, and which OpenID Providers may sign their people in).

A domain is matched exactly: the part of the address after its last ``@``, lower
case, IDNA-encoded (so a homograph such as ``exаmple.com`` with a Cyrillic ``а`` is
``xn--exmple-4nf.com``, another domain), without a trailing dot. ``a@evil-example.com``
and ``a@example.com.evil.io`` are not in ``example.com``; subdomains are not either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

from sqlalchemy import ColumnElement, Select, and_, delete, func, or_, select
from sqlalchemy.orm import Session

from atoll.errors import (
    DomainTakenError,
    LastAdminError,
    NotFoundError,
    ValidationFailedError,
)
from atoll.runtime.ids import new_id
from atoll.store.db import Database
from atoll.store.models import AuthSession, Org, OrgDomain, OrgMember, OrgProvider, User, utcnow

MAX_DOMAIN = 253
SSO_REQUIRED = "sso_required"
"""Why a password is refused: the organisation requires its identity provider."""
PROVIDER_NOT_ALLOWED = "provider_not_allowed"
"""Why a provider is refused: the organisation is bound to others."""
ORG_ROLES = ("admin", "member")
OrgRole = Literal["admin", "member"]
SelectT = TypeVar("SelectT", bound=Select)  # type: ignore[type-arg]


def normalise_domain(domain: str) -> str | None:
    """``domain`` as stored and compared (IDNA, lower case); None when it is not one."""
    domain = domain.strip().rstrip(".").lower()
    if not domain or any(c.isspace() or c in "@/\\" for c in domain):
        return None
    try:
        encoded = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if len(encoded) > MAX_DOMAIN or "." not in encoded:
        return None
    return encoded


def email_domain(email: str) -> str | None:
    """The domain of ``email``: what follows its last ``@``, normalised."""
    _, at, domain = email.rpartition("@")
    return normalise_domain(domain) if at else None


def org_of_domain_in(session: Session, email: str) -> Org | None:
    """Inside a write job: the organisation that owns ``email``'s domain, if any."""
    domain = email_domain(email)
    if domain is None:
        return None
    query = (
        select(Org).join(OrgDomain, OrgDomain.org_id == Org.id).where(OrgDomain.domain == domain)
    )
    return session.execute(query).scalar()


def membership_in(session: Session, user_id: str) -> OrgMember | None:
    """Inside a write job: the user's membership, if they have one (and were not removed)."""
    member = session.get(OrgMember, user_id)
    return member if member is not None and member.removed_at is None else None


@dataclass(frozen=True, slots=True)
class SignInPolicy:
    """The ways into an organisation: a password unless it requires SSO, and its bound
    providers (none bound: any configured provider)."""

    org_id: str
    sso_required: bool
    providers: frozenset[str]

    def refusal(self, provider: str | None) -> str | None:
        """Why a sign-in through ``provider`` (None: a password) is refused; None if allowed."""
        if provider is None:
            return SSO_REQUIRED if self.sso_required else None
        if self.providers and provider not in self.providers:
            return PROVIDER_NOT_ALLOWED
        return None


def policy_in(session: Session, org: Org) -> SignInPolicy:
    """Inside a write job: the organisation's sign-in policy."""
    bound = select(OrgProvider.provider).where(OrgProvider.org_id == org.id)
    return SignInPolicy(org.id, org.sso_required, frozenset(session.execute(bound).scalars()))


def policies_in(session: Session, user_id: str | None, emails: Iterable[str]) -> list[SignInPolicy]:
    """Inside a write job: the policies that govern a sign-in — of the organisation the user
    is a member of, and of those owning the domain of each of ``emails``."""
    orgs: dict[str, Org] = {}
    member = membership_in(session, user_id) if user_id is not None else None
    if member is not None and (org := session.get(Org, member.org_id)) is not None:
        orgs[org.id] = org
    for email in emails:
        if (owner := org_of_domain_in(session, email)) is not None:
            orgs[owner.id] = owner
    return [policy_in(session, org) for org in orgs.values()]


def refusal_in(
    session: Session, user_id: str | None, emails: Iterable[str], provider: str | None
) -> str | None:
    """Inside a write job: why the governing organisations refuse a sign-in through
    ``provider`` (None: a password), or None when they all allow it."""
    for policy in policies_in(session, user_id, emails):
        if (reason := policy.refusal(provider)) is not None:
            return reason
    return None


def _in_domain(domain: str) -> ColumnElement[bool]:
    """Emails ending in ``@domain`` (as stored: ASCII or the Unicode form), a superset that
    ``email_domain`` then narrows exactly."""
    forms = {domain}
    with contextlib.suppress(UnicodeError):
        forms.add(domain.encode("ascii").decode("idna"))
    escaped = (f.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") for f in forms)
    return or_(*(User.email.like(f"%@{e}", escape="\\") for e in escaped))


def _refusable(policy: SignInPolicy) -> ColumnElement[bool] | None:
    """The sessions ``policy`` may refuse, as a filter (None: it refuses none), so that only
    those are read; ``SignInPolicy.refusal`` still decides each one."""
    conditions: list[ColumnElement[bool]] = []
    if policy.sso_required:
        conditions.append(AuthSession.provider.is_(None))
    if policy.providers:
        conditions.append(
            and_(AuthSession.provider.is_not(None), AuthSession.provider.not_in(policy.providers))
        )
    return or_(*conditions) if conditions else None


def revoke_against_policy(session: Session, org_id: str) -> list[str]:
    """Inside a write job: end every live session of the organisation's people (its members
    and the owners of addresses in its domains) that its policy no longer lets in; their ids.

    A session is refused as its sign-in would be now: a password one when SSO is
    required, one from a provider the organisation is not bound to.
    """
    org = session.get(Org, org_id)
    if org is None:
        raise NotFoundError("organisation not found")
    policy = policy_in(session, org)
    refusable = _refusable(policy)
    if refusable is None:
        return []
    domains = set(session.execute(select(OrgDomain.domain).where(OrgDomain.org_id == org_id))
                  .scalars())  # fmt: skip
    members = select(OrgMember.user_id).where(
        OrgMember.org_id == org_id, OrgMember.removed_at.is_(None)
    )
    people = or_(User.id.in_(members), *(_in_domain(domain) for domain in domains))
    live = (
        select(AuthSession, User.email, OrgMember.org_id)
        .join(User, User.id == AuthSession.user_id)
        .outerjoin(OrgMember, and_(OrgMember.user_id == User.id, OrgMember.removed_at.is_(None)))
        .where(AuthSession.revoked_at.is_(None), refusable, people)
    )
    now, ended = utcnow(), []
    for row, email, member_of in session.execute(live).all():
        if member_of != org_id and email_domain(email) not in domains:
            continue  # a look-alike address the LIKE let through
        reason = policy.refusal(row.provider)
        if reason is not None:
            row.revoked_at, row.revoked_reason = now, reason
            ended.append(row.id)
    return ended


def with_org(query: SelectT) -> SelectT:
    """``query``, which has ``User`` in its FROM, joined to the user's current organisation
    (outer: users without one keep their row), for ``effective_plan`` and ``Org`` columns."""
    current = and_(OrgMember.user_id == User.id, OrgMember.removed_at.is_(None))
    return query.outerjoin(OrgMember, current).outerjoin(Org, Org.id == OrgMember.org_id)


def effective_plan() -> ColumnElement[str]:
    """The plan a user is on: their organisation's, else their own (use with ``with_org``)."""
    return func.coalesce(Org.plan, User.plan)


@dataclass(frozen=True, slots=True)
class MemberRow:
    """One member as an org admin sees them."""

    user_id: str
    email: str
    name: str | None
    role: str
    joined_at: datetime
    removed_at: datetime | None


def _member_rows() -> Select[str, str, str | None, str, datetime, datetime | None]:
    return select(
        User.id, User.email, User.name, OrgMember.role, OrgMember.joined_at, OrgMember.removed_at
    ).join(OrgMember, OrgMember.user_id == User.id)


class OrgStore:
    """Organisations, their domains and members."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, name: str, *, plan: str = "free") -> Org:
        """A new organisation."""
        org = Org(id=new_id("org"), name=name, plan=plan, sso_required=False, created_at=utcnow())
        await self.db.write(lambda session: session.add(org))
        return org

    async def add_domain(self, org_id: str, domain: str) -> tuple[str, list[str]]:
        """Give ``domain`` to the organisation (``ValidationFailedError`` for one that is not a
        domain, ``DomainTakenError`` when another organisation owns it): the domain as
        stored, and the sessions of its people that the organisation's policy ended."""
        normalised = normalise_domain(domain)
        if normalised is None:
            raise ValidationFailedError(
                "not a domain", [{"loc": ["domain"], "msg": "not an email domain"}]
            )

        def add(session: Session) -> list[str]:
            if session.get(Org, org_id) is None:
                raise NotFoundError("organisation not found")
            owner = session.get(OrgDomain, normalised)
            if owner is not None and owner.org_id != org_id:
                raise DomainTakenError(f"{normalised} belongs to another organisation")
            if owner is None:
                session.add(OrgDomain(domain=normalised, org_id=org_id))
                session.flush()
            return revoke_against_policy(session, org_id)

        return normalised, await self.db.write(add)

    async def set_policy(
        self,
        org_id: str,
        *,
        sso_required: bool | None = None,
        providers: Iterable[str] | None = None,
    ) -> list[str]:
        """Change the organisation's sign-in policy: whether it requires SSO (passwords refused
        for its people) and the providers it is bound to (empty: any configured one); None
        leaves a part as it is. The sessions this ended (``revoke_against_policy``, in the
        same transaction)."""
        names = sorted(set(providers)) if providers is not None else None

        def change(session: Session) -> list[str]:
            org = session.get(Org, org_id)
            if org is None:
                raise NotFoundError("organisation not found")
            if sso_required is not None:
                org.sso_required = sso_required
            if names is not None:
                session.execute(delete(OrgProvider).where(OrgProvider.org_id == org_id))
                session.add_all(OrgProvider(org_id=org_id, provider=name) for name in names)
                session.flush()
            return revoke_against_policy(session, org_id)

        return await self.db.write(change)

    async def providers(self, org_id: str) -> list[str]:
        """The providers the organisation is bound to (empty: any configured one)."""
        query = select(OrgProvider.provider).where(OrgProvider.org_id == org_id)
        async with self.db.session() as session:
            return sorted((await session.execute(query)).scalars().all())

    async def set_plan(self, org_id: str, plan: str) -> str:
        """Change the organisation's plan; the plan it had."""

        def change(session: Session) -> str:
            org = session.get(Org, org_id)
            if org is None:
                raise NotFoundError("organisation not found")
            previous, org.plan = org.plan, plan
            return previous

        return await self.db.write(change)

    async def get(self, org_id: str) -> Org:
        """The organisation (``NotFoundError`` when there is none)."""
        async with self.db.session() as session:
            org = await session.get(Org, org_id)
        if org is None:
            raise NotFoundError("organisation not found")
        return org

    async def domains(self, org_id: str) -> list[str]:
        """The email domains the organisation owns."""
        query = select(OrgDomain.domain).where(OrgDomain.org_id == org_id)
        query = query.order_by(OrgDomain.domain)
        async with self.db.session() as session:
            return list((await session.execute(query)).scalars().all())

    async def count_members(self, org_id: str) -> int:
        """How many members the organisation has (removed ones not counted)."""
        query = select(func.count()).where(
            OrgMember.org_id == org_id, OrgMember.removed_at.is_(None)
        )
        async with self.db.session() as session:
            return int((await session.execute(query)).scalar_one())

    async def members(
        self,
        org_id: str,
        *,
        removed: bool = False,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[MemberRow]:
        """The organisation's members (or, with ``removed``, those removed), by email;
        ``after`` an email: the page after it."""
        query = (
            _member_rows()
            .where(
                OrgMember.org_id == org_id,
                OrgMember.removed_at.is_not(None) if removed else OrgMember.removed_at.is_(None),
            )
            .order_by(User.email)
        )
        if after is not None:
            query = query.where(User.email > after)
        if limit is not None:
            query = query.limit(limit)
        async with self.db.session() as session:
            if await session.get(Org, org_id) is None:
                raise NotFoundError("organisation not found")
            return [MemberRow(*row) for row in (await session.execute(query)).all()]

    async def member(self, org_id: str, user_id: str) -> MemberRow:
        """One member (current or removed) of the organisation."""
        query = _member_rows().where(OrgMember.org_id == org_id, OrgMember.user_id == user_id)
        async with self.db.session() as session:
            row = (await session.execute(query)).first()
        if row is None:
            raise NotFoundError("no such member")
        return MemberRow(*row)

    async def member_id(self, org_id: str, email: str) -> str:
        """The user id of the member (current or removed) with ``email``."""
        query = (
            select(User.id)
            .join(OrgMember, OrgMember.user_id == User.id)
            .where(OrgMember.org_id == org_id, User.email == email.strip().lower())
        )
        async with self.db.session() as session:
            user_id = (await session.execute(query)).scalar()
        if user_id is None:
            raise NotFoundError("no such member")
        return user_id

    @staticmethod
    def _member_in(session: Session, org_id: str, user_id: str) -> OrgMember:
        member = session.get(OrgMember, user_id)
        if member is None or member.org_id != org_id:
            raise NotFoundError("no such member")
        return member

    @staticmethod
    def _keep_an_admin(session: Session, org_id: str, member: OrgMember) -> None:
        """Refuse to take away the organisation's last admin (when it has one)."""
        if member.role != "admin" or member.removed_at is not None:
            return
        admins = select(func.count()).where(
            OrgMember.org_id == org_id,
            OrgMember.role == "admin",
            OrgMember.removed_at.is_(None),
        )
        if session.execute(admins).scalar_one() <= 1:
            raise LastAdminError("the organisation would have no admin left")

    async def set_role(self, org_id: str, user_id: str, role: OrgRole) -> str:
        """Give a current member ``role``; the role they had."""
        if role not in ORG_ROLES:
            raise ValidationFailedError(
                "unknown role", [{"loc": ["role"], "msg": f"one of {', '.join(ORG_ROLES)}"}]
            )

        def change(session: Session) -> str:
            member = self._member_in(session, org_id, user_id)
            if member.removed_at is not None:
                raise NotFoundError("no such member")
            if role != "admin":
                self._keep_an_admin(session, org_id, member)
            previous, member.role = member.role, role
            return previous

        return await self.db.write(change)

    async def remove_member(self, org_id: str, user_id: str, *, by: str | None) -> None:
        """Take a member out: they cannot sign in again until restored (their sessions are
        the caller's to end). ``by``: the acting user (None: an operator)."""

        def remove(session: Session) -> None:
            member = self._member_in(session, org_id, user_id)
            if member.removed_at is not None:
                return
            self._keep_an_admin(session, org_id, member)
            member.removed_at, member.removed_by, member.role = utcnow(), by, "member"

        await self.db.write(remove)

    async def restore_member(self, org_id: str, user_id: str) -> None:
        """Let a removed member sign in again (as a member)."""

        def restore(session: Session) -> None:
            member = self._member_in(session, org_id, user_id)
            member.removed_at = member.removed_by = None

        await self.db.write(restore)

    async def is_removed(self, user_id: str) -> bool:
        """Whether an organisation removed the user (and has not restored them)."""
        query = select(OrgMember.removed_at).where(OrgMember.user_id == user_id)
        async with self.db.session() as session:
            return (await session.execute(query)).scalar() is not None

    async def membership(self, user_id: str) -> OrgMember | None:
        """The user's current membership, if any."""
        async with self.db.session() as session:
            member = await session.get(OrgMember, user_id)
        return member if member is not None and member.removed_at is None else None

    async def requires_sso(self, email: str) -> bool:
        """Whether ``email`` belongs to an organisation that requires its identity provider."""
        domain = email_domain(email)
        if domain is None:
            return False
        query = (
            select(Org.sso_required)
            .join(OrgDomain, OrgDomain.org_id == Org.id)
            .where(OrgDomain.domain == domain)
        )
        async with self.db.session() as session:
            return bool((await session.execute(query)).scalar())
