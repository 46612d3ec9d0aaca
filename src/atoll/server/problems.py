"""Turning errors into RFC 9457 problem JSON: the one place that formats error answers."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from atoll.errors import AtollError, RateLimitedError

logger = logging.getLogger(__name__)

PROBLEM_TYPE = "https://atoll.dev/problems/"
_HTTP_CODES = {
    401: "invalid_token",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    body = {
        "type": PROBLEM_TYPE + code,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        "errors": errors or [],
    }
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


def _loc(loc: Any) -> list[str | int]:
    return [part for part in loc if isinstance(part, str | int)]


async def _atoll_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AtollError)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    errors = exc.details.get("errors") if isinstance(exc.details.get("errors"), list) else None
    if exc.status >= 500:
        logger.error("request failed: %s", exc.message)
    return problem(exc.status, exc.code, exc.message, errors=errors, headers=headers or None)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": _loc(err.get("loc", ())), "msg": err.get("msg", "invalid")} for err in exc.errors()
    ]
    fields = ", ".join(".".join(str(p) for p in e["loc"][1:] or e["loc"]) for e in errors)
    return problem(422, "validation_error", f"invalid request: {fields}", errors=errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return problem(exc.status_code, code, detail, headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "internal_error", "an unexpected error occurred")


def install_problem_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem JSON."""
    app.add_exception_handler(AtollError, _atoll_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
