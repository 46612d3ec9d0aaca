"""FastAPI dependencies: the app's services and the caller's verified identity."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from atoll.auth.principal import Principal
from atoll.errors import (
    AuthenticationError,
    InsufficientScopeError,
    UnavailableError,
    ValidationFailedError,
)
from atoll.server.services import Services
from atoll.store.bounds import REFUSED_CHARACTERS, UnstorableError, check_text
from atoll.telemetry import hashed

bearer = HTTPBearer(auto_error=False, description="The access token from /auth/login")


def services_of(request: HTTPConnection) -> Services:
    """The services of the app serving this request."""
    services: Services = request.app.state.services
    if not services.accepting:
        raise UnavailableError("the server is shutting down")
    return services


def client_address(connection: HTTPConnection) -> str:
    """The client's address (the peer, or what a trusted proxy forwarded; see operations.md)."""
    return connection.client.host if connection.client is not None else "unknown"


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, from ``Authorization: Bearer`` only, through ``AuthService.authenticate``."""
    services = services_of(request)
    try:
        principal = await services.auth.authenticate(
            credentials.credentials if credentials else None
        )
    except AuthenticationError as exc:
        if credentials is not None:  # a presented token that does not work, not a missing one
            await services.audit.record_sampled(
                "access_denied", key=client_address(request), reason=exc.code, path=request.url.path
            )
        raise
    if principal.scopes is not None:
        check_scope(principal.scopes, request.method, request.url.path)
    if services.tracing.enabled:
        who = {"atoll.user": hashed(principal.user_id)}
        if principal.org_id is not None:
            who["atoll.org"] = hashed(principal.org_id)
        services.tracing.annotate(who)
    return principal


KEYS_NEVER = ("/api/v1/keys", "/api/v1/orgs", "/api/v1/me/identities", "/api/v1/auth")
"""What an API key may not do, whatever its scopes: manage keys, organisations,
identities or sessions (a leaked key cannot make more keys or lock anyone out)."""


def check_scope(scopes: frozenset[str], method: str, path: str) -> None:
    """``InsufficientScopeError`` unless an API key with ``scopes`` may make this request:
    ``read`` for GET and HEAD, ``chat`` for the rest."""
    if any(path == prefix or path.startswith(prefix + "/") for prefix in KEYS_NEVER):
        raise InsufficientScopeError("an API key cannot do this; sign in")
    needed = "read" if method in ("GET", "HEAD") else "chat"
    if needed not in scopes:
        raise InsufficientScopeError(
            f"this API key lacks the {needed!r} scope", details={"scope": needed}
        )


async def get_services(request: Request) -> Services:
    """``services_of`` as a dependency (``async``: FastAPI runs plain ``def`` dependencies in
    its thread pool, a thread hop per request)."""
    return services_of(request)


async def plain_parameters(request: Request) -> None:
    """Every query parameter of the API is a single value: a repeated one is a 422, not
    whichever copy the framework happens to read. And no path or query parameter holds
    text that cannot be stored (``check_text``, as bodies and frames: ``load_json``)."""
    counts = Counter(key for key, _ in request.query_params.multi_items())
    repeated = sorted(key for key, count in counts.items() if count > 1)
    if repeated:
        raise ValidationFailedError(
            "repeated query parameter",
            [{"loc": ["query", key], "msg": "given more than once"} for key in repeated],
        )
    places = [("path", k, v) for k, v in request.path_params.items() if isinstance(v, str)]
    places += [("query", k, v) for k, v in request.query_params.multi_items()]
    refused = []
    for where, key, value in places:
        try:
            check_text(key)
            check_text(value)
        except UnstorableError as exc:
            refused.append({"loc": [where, REFUSED_CHARACTERS.sub("\ufffd", key)], "msg": str(exc)})
    if refused:
        raise ValidationFailedError("invalid parameter", refused)


async def get_address(request: Request) -> str:
    """The client address of the request (for per-address limits)."""
    return client_address(request)


ServicesDep = Annotated[Services, Depends(get_services)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AddressDep = Annotated[str, Depends(get_address)]
