"""``create_app(settings)``: the ASGI app, for ``atoll serve`` or any ASGI server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from atoll import __version__
from atoll.config import Settings
from atoll.server.bodies import StrictJSONRoute
from atoll.server.deps import plain_parameters
from atoll.server.middleware import (
    BodyLimitMiddleware,
    SecurityHeadersMiddleware,
    TracingMiddleware,
)
from atoll.server.page import PageAssets
from atoll.server.problems import install_openapi, install_problem_handlers
from atoll.server.routes import agui, auth, keys, openai_api, ops, orgs, runs, signin, threads
from atoll.server.services import running_services
from atoll.server.websocket import websocket_endpoint
from atoll.telemetry import Tracing, tracing_from_environment

API = "/api/v1"
DESCRIPTION = (
    "Text anywhere in a request — JSON bodies, WebSocket frames, path and query "
    "parameters, object keys included — may not contain U+0000 or lone surrogates "
    "(PostgreSQL cannot store the one, UTF-8 cannot encode the others): 422 "
    "`validation_error` naming the place, on every door. Request heads over the limits "
    "(docs/operations.md) are answered 431 `headers_too_large`."
)
WEB = Path(__file__).resolve().parent / "web"


class RevalidatedStaticFiles(StaticFiles):
    """The page's static files, revalidated on every use (``no-cache`` with the ETag and
    Last-Modified Starlette sends: a 304 when unchanged), so a new release is never mixed
    with a cached older script."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def create_app(settings: Settings | None = None, *, tracing: Tracing | None = None) -> FastAPI:
    """A new app; everything it owns is built in its lifespan and kept on ``app.state``.

    ``tracing``: OpenTelemetry's environment variables decide, unless given (tests).
    """
    settings = settings or Settings()
    tracing = tracing or tracing_from_environment()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_services(settings, tracing) as services:
            app.state.services = services
            yield

    docs = settings.docs_enabled
    app = FastAPI(
        title="Atoll",
        version=__version__,
        summary="Multi-tenant AI-agent runtime",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.router.route_class = StrictJSONRoute
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    if tracing.enabled:  # outermost: the span covers everything the server does
        app.add_middleware(TracingMiddleware, tracing=tracing)
    install_problem_handlers(app)
    install_openapi(app)
    once = [Depends(plain_parameters)]
    app.include_router(auth.router, prefix=API, dependencies=once)
    app.include_router(signin.router, prefix=API, dependencies=once)
    app.include_router(threads.router, prefix=API, dependencies=once)
    app.include_router(runs.router, prefix=API, dependencies=once)
    app.include_router(orgs.router, prefix=API, dependencies=once)
    app.include_router(keys.router, prefix=API, dependencies=once)
    app.include_router(agui.router, prefix=API, dependencies=once)
    app.include_router(openai_api.router, dependencies=once)
    app.include_router(ops.router)
    app.add_api_websocket_route(f"{API}/ws", websocket_endpoint)
    assets = PageAssets(WEB)
    app.add_route("/", assets.page, include_in_schema=False)
    app.add_route("/t/{thread_id}", assets.page, include_in_schema=False)
    app.add_route("/static/{version:str}/{path:path}", assets.versioned, include_in_schema=False)
    app.mount("/static", RevalidatedStaticFiles(directory=WEB), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        """The icon, for clients that ask for it without reading the page's link."""
        return FileResponse(
            WEB / "favicon.svg", media_type="image/svg+xml", headers={"Cache-Control": "no-cache"}
        )

    return app
