"""``OrgAdmin``: what an organisation's admins (over REST) and operators (the CLI) change.

Every change is audited with who made it (``by``: the acting user's id, None for an
operator at the command line). Removing a member ends all their sessions and API
keys at once and keeps them out (no sign-in, no password login) until an admin restores them;
an organisation never loses its last admin through this door.

A change of the sign-in policy (SSO required, the providers it is bound to, a new
domain) ends, in the same transaction, every session of the organisation's people
that the new policy would not let in, and announces each one like a logout (their
sockets and streams end). The methods answer the ended session ids.
"""

from __future__ import annotations

from atoll.auth.principal import Principal
from atoll.auth.service import REMOVED_FROM_ORG, AuthService
from atoll.errors import (
    LastSignInError,
    NotFoundError,
    OrgAdminRequiredError,
    ValidationFailedError,
)
from atoll.runtime.plans import PlanCatalog
from atoll.store.audit import AuditLog
from atoll.store.identities import IdentityStore
from atoll.store.models import Org, OrgMember
from atoll.store.orgs import OrgRole, OrgStore, SignInPolicy

OPERATOR = "operator"


class OrgAdmin:
    """Organisation changes, checked and audited in one place."""

    def __init__(
        self,
        orgs: OrgStore,
        auth: AuthService,
        audit: AuditLog,
        plans: PlanCatalog,
        *,
        providers: frozenset[str] = frozenset(),
    ) -> None:
        self.orgs = orgs
        self._identities = IdentityStore(orgs.db)
        self._auth = auth
        self._audit = audit
        self.plans = plans
        self.providers = providers
        """The names of the configured OpenID Providers (what an organisation may bind)."""

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
        """Remove a member and end every session and API key of theirs; how many ended."""
        await self.orgs.remove_member(org_id, user_id, by=by)
        ended = await self._auth.revoke_all(user_id, REMOVED_FROM_ORG)
        await self._audited("org_member_removed", org_id, by, member=user_id, sessions=ended)
        return ended

    async def restore(self, org_id: str, user_id: str, *, by: str | None) -> None:
        """Let a removed member sign in again."""
        await self.orgs.restore_member(org_id, user_id)
        await self._audited("org_member_restored", org_id, by, member=user_id)

    async def require_sso(self, org_id: str, required: bool, *, by: str | None) -> list[str]:
        """Refuse (or allow again) passwords for the organisation's people; the sessions
        this ended (their password sessions, when required)."""
        return await self.set_policy(org_id, sso_required=required, by=by)

    async def set_providers(
        self, org_id: str, providers: list[str], *, by: str | None
    ) -> list[str]:
        """Bind the organisation to ``providers`` (configured names; empty: any configured
        provider); the sessions this ended (those from providers no longer allowed)."""
        return await self.set_policy(org_id, providers=providers, by=by)

    async def set_policy(
        self,
        org_id: str,
        *,
        sso_required: bool | None = None,
        providers: list[str] | None = None,
        by: str | None,
    ) -> list[str]:
        """Change the organisation's sign-in policy (None: that part unchanged), checked as a
        whole and applied in one transaction; the sessions it ended."""
        if providers is not None:
            self._check_providers(providers)
        if by is not None:
            org = await self.orgs.get(org_id)
            bound = set(providers) if providers is not None else await self.orgs.providers(org_id)
            required = org.sso_required if sso_required is None else sso_required
            await self._keep_a_way_in(by, SignInPolicy(org_id, required, frozenset(bound)))
        ended = await self.orgs.set_policy(org_id, sso_required=sso_required, providers=providers)
        await self._ended(ended)
        if sso_required is not None:
            await self._audited(
                "org_sso_changed", org_id, by, sso_required=sso_required, sessions=len(ended)
            )
        if providers is not None:
            await self._audited(
                "org_providers_changed", org_id, by, providers=sorted(set(providers)),
                sessions=len(ended),
            )  # fmt: skip
        return ended

    def _check_providers(self, providers: list[str]) -> None:
        """``ValidationFailedError`` unless every one of ``providers`` is configured."""
        unknown = sorted(set(providers) - self.providers)
        if unknown:
            allowed = ", ".join(sorted(self.providers)) or "none configured"
            raise ValidationFailedError(
                f"unknown provider {unknown[0]!r} (configured: {allowed})",
                [{"loc": ["providers"], "msg": f"each one of: {allowed}"}],
            )

    async def add_domain(
        self, org_id: str, domain: str, *, by: str | None
    ) -> tuple[str, list[str]]:
        """Give ``domain`` to the organisation: the domain as stored, and the sessions of its
        people that the organisation's policy ended (a password one when SSO is required)."""
        stored, ended = await self.orgs.add_domain(org_id, domain)
        await self._ended(ended)
        await self._audited("org_domain_added", org_id, by, domain=stored, sessions=len(ended))
        return stored, ended

    async def _ended(self, session_ids: list[str]) -> None:
        """Sessions a policy change ended in the database: forget them here and tell the
        other processes (whose sockets opened with them close)."""
        for session_id in session_ids:
            await self._auth.forget(session_id)

    async def _keep_a_way_in(self, admin_id: str, policy: SignInPolicy) -> None:
        """``LastSignInError`` when ``policy`` would leave the acting admin no way to sign in:
        their password refused (or none) and no linked identity from an allowed provider."""
        user, providers = await self._identities.ways_in(admin_id)
        password = user is not None and not user.password_hash.startswith("!")
        if password and policy.refusal(None) is None:
            return
        if any(policy.refusal(provider) is None for provider in providers):
            return
        raise LastSignInError(
            "link your identity provider to your account first (one your organisation "
            "allows): otherwise nothing would sign you in any more"
        )
