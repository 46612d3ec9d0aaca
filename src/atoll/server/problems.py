"""Turning errors into RFC 9457 problem JSON: the one place that formats error answers."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection
from starlette.routing import Match

from atoll.errors import AtollError
from atoll.store.bounds import InvalidJSONError
from atoll.store.faults import storage_fault

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


class ProblemField(BaseModel):
    """One offending field of a request: where it is and what is wrong with it."""

    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every 4xx/5xx answer."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    """A stable machine code: ``validation_error``, ``not_found``, ``rate_limited`` …"""
    errors: list[ProblemField]
    reason: str | None = None
    """For ``sign_in_failed``: why, in a stable word (``state_invalid``, ``email_unverified`` …)."""


PROBLEM_DESCRIPTIONS = {
    403: "Refused for this account (`sso_required`: sign in with the organisation's provider)",
    401: "Missing, invalid, expired or revoked token (`invalid_token`, `token_expired` …), or a "
    "sign-in that cannot complete (`sign_in_failed`; `reason` says why)",
    404: "No such resource, or another user's (`not_found`)",
    409: "Conflict (`thread_busy`, `email_taken`)",
    413: "Request body too large (`too_large`)",
    414: "Request line over the limit (`uri_too_long`; docs/operations.md)",
    422: "Invalid input; `errors` names each field (`validation_error`, `unknown_agent`)",
    429: "Rate or concurrency limit reached; see `Retry-After` (`rate_limited` …)",
    431: "Request headers over the size or count limits (`headers_too_large`; docs/operations.md)",
    503: "Shutting down, or the database or run queue is unreachable (`unavailable`), or the "
    "database's disk is full (`storage_full`); see `Retry-After`",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that can answer with these problem statuses."""
    content = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    return {
        status: {"description": PROBLEM_DESCRIPTIONS[status], "content": content}
        for status in statuses
    }


def install_openapi(app: FastAPI) -> None:
    """Generate the OpenAPI document with the ``Problem`` schema every error refers to."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(problem_schema.pop("$defs", {}))
            schemas["Problem"] = problem_schema
            openai_schema = OpenAIError.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schemas.update(openai_schema.pop("$defs", {}))
            schemas["OpenAIError"] = openai_schema
            drop_null_parameters(document)
            document_head_limits(document)
            require_discriminators(document)
            services = getattr(app.state, "services", None)
            if services is not None:
                name_agents(schemas, sorted(services.registry.agents), document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


HEAD_LIMITS = (414, 431)
"""What any request may be answered before it reaches a route: a head over the limits."""


def document_head_limits(document: dict[str, Any]) -> None:
    """Every operation may answer 414 or 431 (``http11``): say so in each."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, response in problems(*HEAD_LIMITS).items():
                responses.setdefault(str(status), response)


def drop_null_parameters(document: dict[str, Any]) -> None:
    """Optional query and header parameters are absent, never ``null`` (which a client would
    send as the text "null"): document them by their type alone."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                schema = parameter.get("schema", {})
                options = [o for o in schema.get("anyOf", ()) if o.get("type") != "null"]
                if len(options) == 1 and len(schema["anyOf"]) == 2:
                    del schema["anyOf"]
                    schema.update(options[0])


def require_discriminators(document: dict[str, Any]) -> None:
    """A tagged union's tag is required in each of its members, as validation requires it
    (pydantic leaves a tag with a default out of ``required``: AG-UI's message types)."""
    schemas = document.get("components", {}).get("schemas", {})

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            discriminator = node.get("discriminator")
            if isinstance(discriminator, dict) and "propertyName" in discriminator:
                tag = discriminator["propertyName"]
                for ref in discriminator.get("mapping", {}).values():
                    member = schemas.get(str(ref).rsplit("/", 1)[-1])
                    if member is not None and tag not in member.setdefault("required", []):
                        member["required"].append(tag)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(document)


def name_agents(schemas: dict[str, Any], agents: list[str], document: dict[str, Any]) -> None:
    """Document ``agent`` fields and parameters as one of the registered agents (plugins
    included)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                if parameter.get("name") == "agent":
                    _name_agents(parameter.setdefault("schema", {}), agents)
    for schema in schemas.values():
        properties = schema.get("properties", {})
        for name in ("agent", "model"):  # ``model``: the OpenAI-compatible API's agent
            if name in properties:
                _name_agents(properties[name], agents)


def _name_agents(field: dict[str, Any], agents: list[str]) -> None:
    for option in field.get("anyOf", [field]):
        if option.get("type") == "string":
            option["enum"] = agents
            option.pop("maxLength", None)
            option.pop("minLength", None)


def problem_body(
    status: int, code: str, detail: str, *,
    errors: list[dict[str, Any]] | None = None, extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The RFC 9457 problem object; ``extensions`` are the error's details (extension
    members: ``reason``, ``retry_after``, ``limit``, ``scope`` …), never replacing a member."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + code,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        "errors": errors or [],
    }
    for key, value in (extensions or {}).items():
        body.setdefault(key, value)
    return body


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> JSONResponse:
    """A problem+json response (``problem_body``)."""
    body = problem_body(status, code, detail, errors=errors, extensions=extensions)
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


OPENAI_PREFIX = "/v1/"
"""Paths of the OpenAI-compatible API, whose errors take OpenAI's shape (its clients parse it)."""
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIErrorBody(BaseModel):
    """An error of the OpenAI-compatible API; ``code`` is the same stable code as in problem
    JSON, and the problem's extension members (``retry_after`` …) are kept."""

    message: str
    type: str
    code: str
    param: str | None
    errors: list[ProblemField]


class OpenAIError(BaseModel):
    """The body of every 4xx/5xx answer under ``/v1`` (OpenAI's error shape)."""

    error: OpenAIErrorBody


def openai_error_body(
    status: int,
    code: str,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"error": {message, type, code, param, errors, …}}``."""
    errors = errors or []
    param = ".".join(str(p) for p in errors[0]["loc"][1:]) if errors else None
    body: dict[str, Any] = {
        "message": detail,
        "type": _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "api_error"),
        "code": code,
        "param": param or None,
        "errors": errors,
    }
    for key, value in (extensions or {}).items():
        body.setdefault(key, value)
    return {"error": body}


def error_response(
    request: HTTPConnection,
    status: int,
    code: str,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> JSONResponse:
    """The error answer for ``request``: problem JSON, or OpenAI's shape under ``/v1``."""
    if request.url.path.startswith(OPENAI_PREFIX):
        body = openai_error_body(status, code, detail, errors=errors, extensions=extensions)
        return JSONResponse(body, status_code=status, headers=headers)
    return problem(status, code, detail, errors=errors, headers=headers, extensions=extensions)


def openai_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of an OpenAI-compatible route that can answer with these statuses."""
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}
    return {
        status: {"description": PROBLEM_DESCRIPTIONS[status], "content": content}
        for status in statuses
    }


def _loc(loc: Any) -> list[str | int]:
    return [part for part in loc if isinstance(part, str | int)]


def atoll_error_response(connection: HTTPConnection, exc: AtollError) -> JSONResponse:
    """The answer to ``exc`` for a request (or a WebSocket handshake it refuses)."""
    headers: dict[str, str] = {}
    extensions = dict(exc.details)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        extensions.setdefault("retry_after", round(exc.retry_after, 3))
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    errors = exc.details.get("errors") if isinstance(exc.details.get("errors"), list) else None
    return error_response(
        connection, exc.status, exc.code, exc.message, errors=errors, headers=headers or None,
        extensions=extensions,
    )  # fmt: skip


async def _atoll_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AtollError)
    if exc.status >= 500:
        logger.error("request failed: %s", exc.message)
    return atoll_error_response(request, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": _loc(err.get("loc", ())), "msg": err.get("msg", "invalid")} for err in exc.errors()
    ]
    if isinstance(exc.__cause__, InvalidJSONError):  # the body did not pass ``load_json``
        errors = [{"loc": ["body", *exc.__cause__.loc], "msg": exc.__cause__.reason}]
    fields = ", ".join(".".join(str(p) for p in e["loc"][1:] or e["loc"]) for e in errors)
    return error_response(
        request, 422, "validation_error", f"invalid request: {fields}", errors=errors
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. not UTF-8): bad input
        errors = [{"loc": ["body"], "msg": "the body is not valid UTF-8 JSON"}]
        return error_response(
            request, 422, "validation_error", "invalid request: body", errors=errors
        )
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:  # every method of the path, not only those of its first route
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return error_response(request, exc.status_code, code, detail, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app answers at the request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        for method in getattr(route, "methods", None) or ():
            if route.matches({**request.scope, "method": method})[0] is Match.FULL:
                methods.add(method)
    return sorted(methods)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """A database error that reached a route without passing ``Database`` (which types its
    faults): a fault of the storage is still a 503, and anything else a 500 that keeps the
    connection (the catch-all below makes uvicorn drop it)."""
    fault = storage_fault(exc)
    if fault is not None:
        return await _atoll_error(request, fault)
    return await _unexpected(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(request, 500, "internal_error", "an unexpected error occurred")


def install_problem_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem JSON."""
    app.add_exception_handler(AtollError, _atoll_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
