"""Operations endpoints outside ``/api/v1``: liveness, readiness, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from atoll.server.services import Services

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """The database and the bus (Redis, when scaled out) are reachable (503 otherwise)."""
    services: Services = request.app.state.services
    database = await services.db.ping()
    bus = True if services.cluster is None else await services.cluster.ping()
    ready = database and bus and services.accepting
    body: dict[str, object] = {
        "status": "ready" if ready else "unavailable",
        "database": "ok" if database else "unreachable",
        "bus": ("ok" if bus else "unreachable") if services.cluster else "in-process",
        "accepting": services.accepting,
    }
    if services.cluster is not None:
        body["redis"] = "ok" if bus else "unreachable"
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics."""
    services: Services = request.app.state.services
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
