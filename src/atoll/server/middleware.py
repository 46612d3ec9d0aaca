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
