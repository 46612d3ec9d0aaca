"""Organisations: the email domains they own, their members, whether they require SSO.

A domain is matched exactly: the part of the address after its last ``@``, lower
case, IDNA-encoded (so a homograph such as ``exаmple.com`` with a Cyrillic ``а`` is
``xn--exmple-4nf.com``, another domain), without a trailing dot. ``a@evil-example.com``
and ``a@example.com.evil.io`` are not in ``example.com``; subdomains are not either.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from atoll.errors import DomainTakenError, NotFoundError, ValidationFailedError
from atoll.runtime.ids import new_id
from atoll.store.db import Database
from atoll.store.models import Org, OrgDomain, OrgMember, User, utcnow

MAX_DOMAIN = 253


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
    """Inside a write job: the user's membership, if they have one."""
    return session.get(OrgMember, user_id)


class OrgStore:
    """Organisations, their domains and members."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, name: str, *, plan: str = "free") -> Org:
        """A new organisation."""
        org = Org(id=new_id("org"), name=name, plan=plan, sso_required=False, created_at=utcnow())
        await self.db.write(lambda session: session.add(org))
        return org

    async def add_domain(self, org_id: str, domain: str) -> str:
        """Give ``domain`` to the organisation (``ValidationFailedError`` for one that is not a
        domain, ``EmailTakenError``-like conflict when another organisation owns it)."""
        normalised = normalise_domain(domain)
        if normalised is None:
            raise ValidationFailedError(
                "not a domain", [{"loc": ["domain"], "msg": "not an email domain"}]
            )

        def add(session: Session) -> None:
            if session.get(Org, org_id) is None:
                raise NotFoundError("organisation not found")
            owner = session.get(OrgDomain, normalised)
            if owner is not None and owner.org_id != org_id:
                raise DomainTakenError(f"{normalised} belongs to another organisation")
            if owner is None:
                session.add(OrgDomain(domain=normalised, org_id=org_id))

        await self.db.write(add)
        return normalised

    async def require_sso(self, org_id: str, required: bool) -> None:
        """Whether password sign-in is refused for the organisation's domains."""

        def set_flag(session: Session) -> None:
            org = session.get(Org, org_id)
            if org is None:
                raise NotFoundError("organisation not found")
            org.sso_required = required

        await self.db.write(set_flag)

    async def set_plan(self, org_id: str, plan: str) -> str:
        """Change the organisation's plan; the plan it had."""

        def change(session: Session) -> str:
            org = session.get(Org, org_id)
            if org is None:
                raise NotFoundError("organisation not found")
            previous, org.plan = org.plan, plan
            return previous

        return await self.db.write(change)

    async def members(self, org_id: str) -> list[tuple[User, OrgMember]]:
        """The organisation's members, by email."""
        query = (
            select(User, OrgMember)
            .join(OrgMember, OrgMember.user_id == User.id)
            .where(OrgMember.org_id == org_id)
            .order_by(User.email)
        )
        async with self.db.session() as session:
            if await session.get(Org, org_id) is None:
                raise NotFoundError("organisation not found")
            return [(user, member) for user, member in (await session.execute(query)).all()]

    async def remove_member(self, org_id: str, email: str) -> str:
        """Take the user with ``email`` out of the organisation; their user id."""

        def remove(session: Session) -> str:
            user = session.execute(select(User).where(User.email == email.strip().lower())).scalar()
            member = session.get(OrgMember, user.id) if user is not None else None
            if user is None or member is None or member.org_id != org_id:
                raise NotFoundError("no such member")
            session.delete(member)
            return user.id

        return await self.db.write(remove)

    async def membership(self, user_id: str) -> OrgMember | None:
        """The user's membership, if any."""
        async with self.db.session() as session:
            return await session.get(OrgMember, user_id)

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
