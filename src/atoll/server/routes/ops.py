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
    """The database and the bus are reachable (503 otherwise)."""
    services: Services = request.app.state.services
    database = await services.db.ping()
    ready = database and services.accepting
    body = {
        "status": "ready" if ready else "unavailable",
        "database": "ok" if database else "unreachable",
        "bus": "ok",
        "accepting": services.accepting,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics."""
    services: Services = request.app.state.services
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
