"""Signing in with an OpenID Provider (see ``atoll.auth.signin``): the providers, the
redirect, the callback, the one-time code exchange, and the user's linked identities."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Cookie, Path, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from atoll.errors import AtollError, NotFoundError, SignInError
from atoll.server.bodies import StrictJSONRoute
from atoll.server.deps import AddressDep, PrincipalDep, ServicesDep
from atoll.server.problems import problems
from atoll.server.routes.auth import token_out
from atoll.server.schemas import INTEGER_TEXT, Body, TokenOut
from atoll.store.bounds import MAX_ROW_KEY

router = APIRouter(tags=["auth"], route_class=StrictJSONRoute)
COOKIE = "atoll_signin"
COOKIE_PATH = "/api/v1/auth/oidc"
BrowserCookie = Annotated[str | None, Cookie(alias=COOKIE, max_length=100)]


class ProviderOut(BaseModel):
    name: str
    display_name: str
    start_url: str


class ExchangeBody(Body):
    code: str = Field(min_length=1, max_length=100)


class LinkOut(BaseModel):
    url: str


class IdentityOut(BaseModel):
    id: int
    provider: str
    issuer: str
    email: str | None


def redirect_uri(request: Request, name: str) -> str:
    """The callback URL registered with the provider (``ATOLL_PUBLIC_URL`` or this request's)."""
    services = request.app.state.services
    base = services.settings.public_url or str(request.base_url).rstrip("/")
    return f"{base}/api/v1/auth/oidc/{name}/callback"


def _with_cookie(response: Response, request: Request, browser: str) -> Response:
    response.set_cookie(
        COOKIE, browser, max_age=600, path=COOKIE_PATH, httponly=True, samesite="lax",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


@router.get("/auth/providers")
async def list_providers(services: ServicesDep) -> list[ProviderOut]:
    """The OpenID Providers this server offers ("Sign in with …")."""
    return [
        ProviderOut(
            name=name,
            display_name=provider.settings.display_name,
            start_url=f"/api/v1/auth/oidc/{name}/start",
        )
        for name, provider in services.signin.providers.items()
    ]


@router.get(
    "/auth/oidc/{name}/start", status_code=303, response_class=RedirectResponse,
    responses=problems(404, 422, 503),
)  # fmt: skip
async def start_sign_in(
    name: str,
    request: Request,
    services: ServicesDep,
    next: Annotated[str | None, Query(max_length=2000)] = None,
) -> Response:
    """Send the browser to the provider (code flow with PKCE, state and nonce); back to the
    page with the reason when the provider cannot be reached."""
    try:
        url, browser = await services.signin.start(
            name, redirect_uri=redirect_uri(request, name), next_url=next
        )
    except SignInError as exc:  # audited by the sign-in service
        return RedirectResponse(f"/#signin_error={quote(exc.reason)}", status_code=303)
    return _with_cookie(RedirectResponse(url, status_code=303), request, browser)


@router.post("/auth/oidc/{name}/link", responses=problems(401, 404, 503))
async def start_link(
    name: str, request: Request, principal: PrincipalDep, services: ServicesDep
) -> Response:
    """For a signed-in user: where to go to link this provider to their account."""
    url, browser = await services.signin.start(
        name, redirect_uri=redirect_uri(request, name), next_url="/", link_user_id=principal.user_id
    )
    response = Response(LinkOut(url=url).model_dump_json(), media_type="application/json")
    return _with_cookie(response, request, browser)


@router.get(
    "/auth/oidc/{name}/callback", status_code=303, response_class=RedirectResponse,
    include_in_schema=False,
)  # fmt: skip
async def sign_in_callback(
    name: str,
    request: Request,
    services: ServicesDep,
    address: AddressDep,
    browser: BrowserCookie = None,
    code: Annotated[str | None, Query(max_length=2000)] = None,
    state: Annotated[str | None, Query(max_length=200)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Where the provider returns the browser: back to the page with a one-time code in the
    URL fragment, or with the reason the sign-in failed (never a token)."""
    try:
        target, one_time = await services.signin.callback(
            name, code=code, state=state, browser=browser, redirect_uri=redirect_uri(request, name),
            error=error, address=address,
        )  # fmt: skip
        location = f"{target.split('#', 1)[0]}#signin={quote(one_time)}"
    except SignInError as exc:  # audited by the sign-in service, with who was tried
        location = f"/#signin_error={quote(exc.reason)}"
    except NotFoundError:
        location = "/#signin_error=unknown_provider"
    except AtollError as exc:
        location = f"/#signin_error={quote(exc.code)}"
    response = RedirectResponse(location, status_code=303)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/auth/oidc/exchange", responses=problems(401, 413, 422, 503))
async def exchange_code(
    body: ExchangeBody, services: ServicesDep, browser: BrowserCookie = None
) -> TokenOut:
    """Trade the one-time code of a finished sign-in for tokens (once, by the same browser)."""
    return token_out(await services.signin.exchange(body.code, browser))


@router.get("/me/identities", responses=problems(401, 503))
async def list_identities(principal: PrincipalDep, services: ServicesDep) -> list[IdentityOut]:
    """The provider accounts linked to the caller's."""
    rows = await services.signin.identities(principal.user_id)
    return [IdentityOut(id=r.pk, provider=r.provider, issuer=r.issuer, email=r.email) for r in rows]


@router.delete(
    "/me/identities/{identity_id}",
    status_code=204,
    responses=problems(401, 404, 409, 422, 503),
)
async def unlink_identity(
    identity_id: Annotated[int, Path(ge=1, le=MAX_ROW_KEY), INTEGER_TEXT],
    principal: PrincipalDep,
    services: ServicesDep,
) -> Response:
    """Remove a linked provider account (not the last way to sign in of an account with no
    password: 409 ``last_sign_in``)."""
    await services.signin.unlink(principal.user_id, identity_id)
    return Response(status_code=204)
