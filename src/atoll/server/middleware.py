"""Pure ASGI middleware: security headers on every answer, and a cap on request bodies.

Both are plain ASGI (no ``BaseHTTPMiddleware``), so streaming answers (SSE) pass
through untouched and the hot path pays a dict lookup, not a task.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atoll.server.problems import error_response
from atoll.telemetry import Tracing

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
"""The chat page loads only its own script, style and socket (no inline code)."""
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
"""Swagger UI and ReDoc are FastAPI's pages: inline start-up code and assets from a CDN."""
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
"""JSON, SSE and problem answers are never rendered as documents."""

COMMON = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


def policy_for(path: str) -> str:
    """The Content-Security-Policy of the answer at ``path``."""
    if path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        return DOCS_POLICY
    if path == "/" or path.startswith(("/static/", "/t/")):
        return PAGE_POLICY
    return API_POLICY


class SecurityHeadersMiddleware:
    """Adds CSP (``frame-ancestors 'none'``), ``nosniff``, Referrer- and Permissions-Policy."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = policy_for(scope["path"]).encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in COMMON:
                    if name.decode() not in headers:
                        headers.append(name.decode(), value.decode())
                headers["content-security-policy"] = policy.decode()
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413, before they are parsed.

    A declared ``Content-Length`` over the limit is refused at once; a body sent
    without one (chunked) is counted as it arrives and refused when it passes it.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return
                break
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, f"the request body is larger than {self.max_bytes}")
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"the request body is larger than {self.max_bytes} bytes"
        await error_response(Request(scope), 413, "too_large", detail)(scope, receive, send)


def full_route(path: str, route: str) -> str:
    """The route template with its router's prefix, which FastAPI leaves out of an included
    router's routes: ``/chat`` for ``/api/v1/chat`` is ``/api/v1/chat``."""
    if ":path}" in route:  # a catch-all parameter spans segments: cannot count them
        return route
    segments, tail = path.split("/"), route.split("/")
    if len(segments) < len(tail):
        return route
    prefix = "/".join(segments[: len(segments) - len(tail) + 1])
    return prefix + route if not route.startswith(prefix + "/") else route


class TracingMiddleware:
    """A server span per HTTP request and per WebSocket connection, named by its route
    (``GET /api/v1/threads/{thread_id}``) once routing has found it."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "WS") if scope["type"] == "http" else "WS"
        attributes = {
            "http.request.method": method,
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.name": scope["type"],
        }
        with self.tracing.span(
            f"{method} {scope.get('path', '')}", attributes, kind="server"
        ) as span:

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set("http.response.status_code", status)
                    if status >= 500:
                        span.fail(str(status))
                await send(message)

            try:
                await self.app(scope, receive, traced_send)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if isinstance(route, str):
                    route = full_route(scope.get("path", ""), route)
                    span.set("http.route", route)
                    span.rename(f"{method} {route}")
