"""``OrgAdmin``: what an organisation's admins (over REST) and operators (the CLI) change.

Every change is audited with who made it (``by``: the acting user's id, None for an
operator at the command line). Removing a member ends all their sessions at once
and keeps them out (no sign-in, no password login) until an admin restores them;
an organisation never loses its last admin through this door.
"""

from __future__ import annotations

from sqlalchemy import select

from atoll.auth.principal import Principal
from atoll.auth.service import AuthService
from atoll.errors import (
    LastSignInError,
    NotFoundError,
    OrgAdminRequiredError,
    ValidationFailedError,
)
from atoll.runtime.plans import PlanCatalog
from atoll.store.audit import AuditLog
from atoll.store.models import Identity, Org, OrgMember
from atoll.store.orgs import OrgRole, OrgStore

OPERATOR = "operator"


class OrgAdmin:
    """Organisation changes, checked and audited in one place."""

    def __init__(
        self, orgs: OrgStore, auth: AuthService, audit: AuditLog, plans: PlanCatalog
    ) -> None:
        self.orgs = orgs
        self._auth = auth
        self._audit = audit
        self.plans = plans

    async def _audited(self, action: str, org_id: str, by: str | None, **detail: object) -> None:
        await self._audit.record(action, user_id=by, org_id=org_id, by=by or OPERATOR, **detail)

    async def membership_of(self, principal: Principal, org_id: str, *, admin: bool) -> OrgMember:
        """The caller's current membership of ``org_id``, read now (not from the session
        cache): ``NotFoundError`` for an organisation they are not in, whether or not it
        exists; ``OrgAdminRequiredError`` when ``admin`` and they are a plain member."""
        member = await self.orgs.membership(principal.user_id)
        if member is None or member.org_id != org_id:
            raise NotFoundError("organisation not found")
        if admin and member.role != "admin":
            raise OrgAdminRequiredError("only an admin of the organisation can do this")
        return member

    async def create(self, name: str, plan: str | None = None) -> Org:
        """A new organisation on ``plan`` (default: the default plan); for operators."""
        plan = plan or self.plans.default
        self.check_plan(plan)
        org = await self.orgs.create(name, plan=plan)
        await self._audited("org_created", org.id, None, name=name, plan=plan)
        return org

    def check_plan(self, plan: str) -> None:
        """``ValidationFailedError`` unless ``plan`` is configured."""
        if plan not in self.plans:
            allowed = ", ".join(self.plans.names())
            raise ValidationFailedError(
                f"unknown plan {plan!r} (configured: {allowed})",
                [{"loc": ["plan"], "msg": f"one of {allowed}"}],
            )

    async def set_plan(self, org_id: str, plan: str, *, by: str | None) -> str:
        """Put the organisation on ``plan``; the plan it had."""
        self.check_plan(plan)
        previous = await self.orgs.set_plan(org_id, plan)
        await self._audited("org_plan_changed", org_id, by, plan=plan, previous=previous)
        return previous

    async def set_role(self, org_id: str, user_id: str, role: OrgRole, *, by: str | None) -> str:
        """Give a member ``role`` (refused for the last admin); the role they had."""
        previous = await self.orgs.set_role(org_id, user_id, role)
        if previous != role:
            await self._audited(
                "org_role_changed", org_id, by, member=user_id, role=role, previous=previous
            )
        return previous

    async def remove(self, org_id: str, user_id: str, *, by: str | None) -> int:
        """Remove a member and end every session of theirs; how many sessions ended."""
        await self.orgs.remove_member(org_id, user_id, by=by)
        ended = await self._auth.revoke_all(user_id, "removed_from_org")
        await self._audited("org_member_removed", org_id, by, member=user_id, sessions=ended)
        return ended

    async def restore(self, org_id: str, user_id: str, *, by: str | None) -> None:
        """Let a removed member sign in again."""
        await self.orgs.restore_member(org_id, user_id)
        await self._audited("org_member_restored", org_id, by, member=user_id)

    async def require_sso(self, org_id: str, required: bool, *, by: str | None) -> None:
        """Refuse (or allow again) passwords for the organisation's domains.

        An admin who has no identity provider linked cannot turn it on: their own
        password would stop working and nothing would sign them in.
        """
        if required and by is not None:
            linked = select(Identity.pk).where(Identity.user_id == by).limit(1)
            async with self.orgs.db.session() as session:
                if (await session.execute(linked)).scalar() is None:
                    raise LastSignInError(
                        "link your identity provider to your account first: with SSO "
                        "required, your password would no longer sign you in"
                    )
        await self.orgs.require_sso(org_id, required)
        await self._audited("org_sso_changed", org_id, by, sso_required=required)
