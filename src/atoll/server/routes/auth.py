"""``/auth/*`` and ``/me``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Cookie, Request, Response

from atoll.auth.devices import DEVICE_COOKIE, DEVICE_COOKIE_PATH, DEVICE_TTL
from atoll.auth.service import IssuedTokens
from atoll.server.bodies import StrictJSONRoute
from atoll.server.deps import AddressDep, PrincipalDep, ServicesDep
from atoll.server.problems import problems
from atoll.server.schemas import (
    LoginBody,
    MeOut,
    OrgRef,
    RefreshBody,
    RegisterBody,
    TokenOut,
    UserOut,
    plan_out,
    usage_out,
)
from atoll.store.models import User, utcnow

router = APIRouter(tags=["auth"], route_class=StrictJSONRoute)
DeviceCookie = Annotated[str | None, Cookie(alias=DEVICE_COOKIE, max_length=200)]


def user_out(user: User) -> UserOut:
    """The public view of a user."""
    return UserOut(
        id=user.id,
        email=user.email,
        name=user.name,
        plan=user.plan,
        roles=list(user.roles or []),
        created_at=user.created_at,
    )


def token_out(issued: IssuedTokens) -> TokenOut:
    """The token answer of register, login and refresh."""
    return TokenOut(
        user=user_out(issued.user),
        access_token=issued.access_token,
        refresh_token=issued.refresh_token,
        expires_in=issued.expires_in,
    )


def keep_device(request: Request, response: Response, issued: IssuedTokens) -> None:
    """Give the client its device cookie (``atoll.auth.devices``): HttpOnly, SameSite=Strict,
    Secure over HTTPS, sent only to ``/api/v1/auth``."""
    if issued.device_cookie is None:
        return
    response.set_cookie(
        DEVICE_COOKIE, issued.device_cookie, max_age=int(DEVICE_TTL), path=DEVICE_COOKIE_PATH,
        httponly=True, samesite="strict", secure=request.url.scheme == "https",
    )  # fmt: skip


@router.post("/auth/register", status_code=201, responses=problems(409, 413, 422, 429, 503))
async def register_account(
    body: RegisterBody, request: Request, response: Response, services: ServicesDep,
    address: AddressDep,
) -> TokenOut:  # fmt: skip
    """Create an account and log in."""
    issued = await services.auth.register(body.email, body.password, body.name, address=address)
    keep_device(request, response, issued)
    return token_out(issued)


@router.post("/auth/login", responses=problems(401, 403, 413, 422, 429, 503))
async def log_in(
    body: LoginBody, request: Request, response: Response, services: ServicesDep,
    address: AddressDep, device: DeviceCookie = None,
) -> TokenOut:  # fmt: skip
    """Log in with email and password. A client that logged in to this account before
    (its device cookie) is not locked out by strangers' failures from its address."""
    issued = await services.auth.login(body.email, body.password, address=address, device=device)
    keep_device(request, response, issued)
    return token_out(issued)


@router.post("/auth/refresh", responses=problems(401, 413, 422, 503))
async def refresh_tokens(body: RefreshBody, services: ServicesDep) -> TokenOut:
    """Trade a refresh token for a new pair; the old one is spent. Presented again within
    the reuse interval it gets the same pair; after it, the session ends (sockets too)."""
    return token_out(await services.auth.refresh(body.refresh_token))


@router.post("/auth/logout", status_code=204, responses=problems(401, 503))
async def log_out(principal: PrincipalDep, services: ServicesDep) -> Response:
    """End the session; its tokens stop working at once, its sockets close (4401) and its
    streams end, on every node."""
    await services.auth.logout(principal)
    return Response(status_code=204)


@router.get("/me", responses=problems(401, 503))
async def me(principal: PrincipalDep, services: ServicesDep) -> MeOut:
    """The caller: their organisation, what their plan allows, and this month's usage."""
    now = utcnow()
    plan = services.plans.get(principal.plan)
    org = await services.orgs.get(principal.org_id) if principal.org_id is not None else None
    return MeOut(
        id=principal.user_id,
        email=principal.email,
        name=principal.name,
        plan=plan.name,
        roles=sorted(principal.roles),
        created_at=principal.created_at,
        org=OrgRef(id=org.id, name=org.name, role=principal.org_role or "member")
        if org is not None
        else None,
        limits=plan_out(plan),
        usage=usage_out(await services.usage.spent(principal.user_id, now), now),
    )
