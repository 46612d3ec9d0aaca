"""Operations endpoints outside ``/api/v1``: liveness, readiness, metrics."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from atoll.errors import AuthenticationError, NotFoundError
from atoll.server.bodies import StrictJSONRoute
from atoll.server.problems import problems
from atoll.server.services import Services

router = APIRouter(tags=["ops"], route_class=StrictJSONRoute)
READY = {
    "type": "object",
    "properties": {
        "status": {"type": "string"},
        "database": {"type": "string", "enum": ["ok", "unavailable", "storage_full"]},
        "bus": {"type": "string"},
        "accepting": {"type": "boolean"},
        "redis": {"type": "string"},
    },
    "required": ["status", "database", "bus", "accepting"],
}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        200: {"description": "Ready", "content": {"application/json": {"schema": READY}}},
        503: {"description": "Not ready", "content": {"application/json": {"schema": READY}}},
    },
)
async def readyz(request: Request) -> JSONResponse:
    """The database can serve requests — it answers and can write (``database``: ``ok``, or
    the code its requests get: ``unavailable``, ``storage_full``) — and the bus (Redis, when
    scaled out) is reachable (503 otherwise)."""
    services: Services = request.app.state.services
    health = await services.db.health()
    bus = True if services.cluster is None else await services.cluster.ping()
    ready = health == "ok" and bus and services.accepting
    body: dict[str, object] = {
        "status": "ready" if ready else "unavailable",
        "database": health,
        "bus": ("ok" if bus else "unreachable") if services.cluster else "in-process",
        "accepting": services.accepting,
    }
    if services.cluster is not None:
        body["redis"] = "ok" if bus else "unreachable"
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        },
        **problems(401, 404),
    },
)
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics (off with ``ATOLL_METRICS_ENABLED=false``; ``ATOLL_METRICS_TOKEN``
    makes them need ``Authorization: Bearer <token>``)."""
    services: Services = request.app.state.services
    settings = services.settings
    if not settings.metrics_enabled:
        raise NotFoundError("not found")
    if settings.metrics_token is not None:
        expected = f"Bearer {settings.metrics_token.get_secret_value()}"
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise AuthenticationError("the metrics token is missing or wrong")
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
