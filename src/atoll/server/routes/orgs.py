"""``/orgs/{org_id}``: an organisation as its members see it, and what its admins manage.

Owner-scoped like everything else: an organisation the caller is not in answers
404 whether it exists or not; a plain member asking for an admin's action gets
403 ``org_admin_required``. Membership and role are read from the database on
every request, so a demoted or removed admin loses these at once.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Query, Response

from atoll.auth.principal import Principal
from atoll.errors import ValidationFailedError
from atoll.runtime.plans import Spent
from atoll.server.bodies import StrictJSONRoute
from atoll.server.deps import PrincipalDep, ServicesDep
from atoll.server.problems import problems
from atoll.server.routes.threads import Limit
from atoll.server.schemas import (
    MemberOut,
    MemberPage,
    MemberPatch,
    OrgOut,
    OrgPatch,
    plan_out,
    usage_out,
)
from atoll.server.services import Services
from atoll.store.models import utcnow
from atoll.store.orgs import MemberRow

router = APIRouter(tags=["organisations"], route_class=StrictJSONRoute)

MemberCursor = Annotated[
    str | None,
    Query(pattern=r"^[A-Za-z0-9_-]{1,600}$", description="The next_cursor of the previous page"),
]


def _encode(email: str) -> str:
    return base64.urlsafe_b64encode(email.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValidationFailedError(
            "bad cursor", [{"loc": ["query", "cursor"], "msg": "not a cursor of this list"}]
        ) from None


async def _org_out(services: Services, principal: Principal, org_id: str, role: str) -> OrgOut:
    org = await services.orgs.get(org_id)
    now = utcnow()
    counted = await services.usage.totals([principal.user_id, org_id], now)
    return OrgOut(
        id=org.id,
        name=org.name,
        plan=plan_out(services.plans.get(org.plan)),
        sso_required=org.sso_required,
        providers=await services.orgs.providers(org_id),
        domains=await services.orgs.domains(org_id),
        members=await services.orgs.count_members(org_id),
        role="admin" if role == "admin" else "member",
        usage=usage_out(Spent(counted[principal.user_id], counted[org_id]), now),
        created_at=org.created_at,
    )


def _member_out(row: MemberRow, tokens: int) -> MemberOut:
    return MemberOut(
        user_id=row.user_id,
        email=row.email,
        name=row.name,
        role="admin" if row.role == "admin" else "member",
        joined_at=row.joined_at,
        removed_at=row.removed_at,
        tokens=tokens,
    )


@router.get("/orgs/{org_id}", responses=problems(401, 404, 503))
async def get_org(org_id: str, principal: PrincipalDep, services: ServicesDep) -> OrgOut:
    """Your organisation: its plan, domains, member count and this month's usage."""
    member = await services.org_admin.membership_of(principal, org_id, admin=False)
    return await _org_out(services, principal, org_id, member.role)


@router.patch("/orgs/{org_id}", responses=problems(401, 403, 404, 409, 422, 503))
async def update_org(
    org_id: str, body: OrgPatch, principal: PrincipalDep, services: ServicesDep
) -> OrgOut:
    """Bind the organisation to its identity providers (``providers``; empty: any
    configured one), and require them (``sso_required``). Sessions the new policy would
    not let in end now (their sockets close with 4401)."""
    member = await services.org_admin.membership_of(principal, org_id, admin=True)
    await services.org_admin.set_policy(
        org_id, sso_required=body.sso_required, providers=body.providers, by=principal.user_id
    )
    return await _org_out(services, principal, org_id, member.role)


@router.get("/orgs/{org_id}/members", responses=problems(401, 403, 404, 422, 503))
async def list_members(
    org_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    limit: Limit = 50,
    cursor: MemberCursor = None,
    removed: bool = False,
) -> MemberPage:
    """The members by email (``removed=true``: those removed), with this month's tokens."""
    await services.org_admin.membership_of(principal, org_id, admin=True)
    after = _decode(cursor) if cursor is not None else None
    rows = await services.orgs.members(org_id, removed=removed, after=after, limit=limit + 1)
    page, more = rows[:limit], len(rows) > limit
    tokens = await services.usage.totals([row.user_id for row in page], utcnow())
    return MemberPage(
        items=[_member_out(row, tokens[row.user_id]) for row in page],
        next_cursor=_encode(page[-1].email) if more else None,
    )


async def _member(services: Services, org_id: str, user_id: str) -> MemberOut:
    row = await services.orgs.member(org_id, user_id)
    tokens = await services.usage.totals([user_id], utcnow())
    return _member_out(row, tokens[user_id])


@router.patch("/orgs/{org_id}/members/{user_id}", responses=problems(401, 403, 404, 409, 422, 503))
async def set_member_role(
    org_id: str, user_id: str, body: MemberPatch, principal: PrincipalDep, services: ServicesDep
) -> MemberOut:
    """Make a member an admin, or a plain member (never the last admin)."""
    await services.org_admin.membership_of(principal, org_id, admin=True)
    await services.org_admin.set_role(org_id, user_id, body.role, by=principal.user_id)
    return await _member(services, org_id, user_id)


@router.delete(
    "/orgs/{org_id}/members/{user_id}",
    status_code=204,
    responses=problems(401, 403, 404, 409, 503),
)
async def remove_member(
    org_id: str, user_id: str, principal: PrincipalDep, services: ServicesDep
) -> Response:
    """Remove a member: every session and API key of theirs ends now (their sockets close
    with 4401 ``removed_from_org``, their streams end) and they cannot sign in again until
    restored."""
    await services.org_admin.membership_of(principal, org_id, admin=True)
    await services.org_admin.remove(org_id, user_id, by=principal.user_id)
    return Response(status_code=204)


@router.post("/orgs/{org_id}/members/{user_id}/restore", responses=problems(401, 403, 404, 503))
async def restore_member(
    org_id: str, user_id: str, principal: PrincipalDep, services: ServicesDep
) -> MemberOut:
    """Let a removed member sign in again, as a plain member."""
    await services.org_admin.membership_of(principal, org_id, admin=True)
    await services.org_admin.restore(org_id, user_id, by=principal.user_id)
    return await _member(services, org_id, user_id)
