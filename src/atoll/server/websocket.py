"""``GET /api/v1/ws``: authenticate, then messages, cancels, resumes and pings.

Authentication is the ``Authorization: Bearer`` header of the upgrade request or
an ``{"type": "auth", "token"}`` first frame within the auth timeout — never a
token in the URL. Bad frames are answered with ``error`` frames and the
connection stays open; a client error never closes with 1011.

The socket lives as long as its session. Every frame that starts work (a message,
a resend, a cancel, a resume; not a ping) checks the session again through
``AuthService.principal_for`` — the second half of the validation every request
goes through, with the session cache — and works as the principal it gets: the
plan, organisation and budget REST applies at that moment. A session that has ended
closes the socket with 4401 instead, and ends everything else it has open here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from atoll.auth.principal import Principal
from atoll.auth.service import Credential, ended_code
from atoll.bus.memory import MemorySubscription, Notice, SessionEnded, SubscriptionOverflowError
from atoll.errors import (
    AtollError,
    AuthenticationError,
    SessionRevokedError,
    TooManySocketsError,
    UnavailableError,
)
from atoll.runtime.ids import new_id
from atoll.server.connections import (
    Ack,
    AddressSocket,
    Connection,
    Resume,
    SlowClientError,
    TooManyConnectionsError,
)
from atoll.server.deps import client_address
from atoll.server.problems import atoll_error_response
from atoll.server.services import Services
from atoll.store.bounds import MAX_SEQ, InvalidJSONError, load_json
from atoll.store.models import Message
from atoll.store.runs import Submission, Submitted

logger = logging.getLogger(__name__)

CLOSE_AUTH = 4401
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
"""A dependency (the database) is unavailable or its disk full: reconnect after a while."""
MULTITASK = ("reject", "enqueue", "interrupt")


class FrameError(Exception):
    """A bad client frame: answered with an ``error`` frame."""

    def __init__(
        self, code: str, detail: str, ref: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.ref = ref
        self.details = details or {}
        """The error's details (``retry_after``, ``scope``…), as a problem's extensions."""

    @classmethod
    def of(cls, error: AtollError, ref: str | None) -> FrameError:
        """The frame error of an ``AtollError``: its code, message and details, and the
        ``retry_after`` its HTTP answer gives as ``Retry-After`` (``unavailable`` …)."""
        details = dict(error.details)
        if error.retry_after is not None:
            details.setdefault("retry_after", round(error.retry_after, 3))
        return cls(error.code, error.message, ref, details)


def error_frame(error: FrameError) -> dict[str, Any]:
    """The ``error`` frame: ``code``, ``detail``, ``ref`` when known, and the error's
    details, never replacing one of those."""
    frame: dict[str, Any] = {"type": "error", "code": error.code, "detail": error.detail}
    if error.ref is not None:
        frame["ref"] = error.ref
    for name, value in error.details.items():
        frame.setdefault(name, value)
    return frame


def _bearer(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class SessionEndedError(Exception):
    """The socket's session ended: it was closed with 4401."""


async def _authenticate(websocket: WebSocket, services: Services) -> tuple[Credential, Principal]:
    token = _bearer(websocket)
    if token is None:
        raw = await asyncio.wait_for(websocket.receive(), services.settings.ws_auth_timeout)
        text = raw.get("text")
        if raw.get("type") != "websocket.receive" or not isinstance(text, str):
            raise AuthenticationError("the first frame must be an auth frame")
        if len(text) > services.settings.max_ws_frame_bytes:
            raise AuthenticationError("the auth frame is too large")
        try:
            frame = load_json(text)
        except InvalidJSONError as exc:
            raise AuthenticationError(f"the auth frame is not JSON ({exc.reason})") from None
        if not isinstance(frame, dict) or frame.get("type") != "auth":
            raise AuthenticationError("the first frame must be an auth frame")
        token = frame.get("token")
        if not isinstance(token, str):
            raise AuthenticationError("the auth frame needs a token")
    credential = services.auth.credential_of(token)
    return credential, await services.auth.principal_for(credential)


def _field(frame: dict[str, Any], name: str, kind: type, *, required: bool = False) -> Any:
    value = frame.get(name)
    if value is None:
        if required:
            raise FrameError("validation_error", f"{name} is required", frame.get("client_id"))
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise FrameError("validation_error", f"{name} must be a {kind.__name__}", _ref(frame))
    return value


def _ref(frame: dict[str, Any]) -> str | None:
    ref = frame.get("client_id") or frame.get("run_id")
    return ref if isinstance(ref, str) else None


class Session:
    """One authenticated socket: reads frames and hands everything to the writer."""

    def __init__(self, services: Services, credential: Credential, connection: Connection) -> None:
        self.services = services
        self.credential = credential
        """What the socket authenticated with: its principal is read again for every frame
        that starts work, never kept."""
        self.connection = connection

    async def _checked(self, ref: str | None) -> Principal:
        """The socket's principal as it is now (``principal_for``, like every request); a
        session that ended closes the socket (4401) and ends what else it has open here."""
        try:
            return await self.services.auth.principal_for(self.credential)
        except AuthenticationError as exc:
            reason = exc.reason if isinstance(exc, SessionRevokedError) else None
            self.services.watch.end(self.credential.session_id, reason or exc.code)
            await self.connection.close(CLOSE_AUTH, ended_code(reason))
            raise SessionEndedError from None
        except AtollError as exc:  # the database is unavailable: this frame fails, not the socket
            raise FrameError.of(exc, ref) from None

    async def read(self) -> None:
        websocket = self.connection.websocket
        limit = self.services.settings.max_ws_frame_bytes
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                size = len(message.get("bytes") or b"")
                if size > limit:
                    await self.connection.close(CLOSE_POLICY, "frame too large")
                    return
                self._error(FrameError("bad_frame", "frames must be JSON text"))
                continue
            if len(text) > limit and len(text.encode()) > limit:
                await self.connection.close(CLOSE_POLICY, "frame too large")
                return
            try:
                await self._frame(text)
            except FrameError as exc:
                self._error(exc)
            except SessionEndedError:
                return

    def _error(self, error: FrameError) -> None:
        self.services.metrics.error_frames.labels(error.code).inc()
        self.connection.send(error_frame(error))

    async def _frame(self, text: str) -> None:
        try:
            frame = load_json(text)
        except InvalidJSONError as exc:
            if not exc.loc:
                raise FrameError("bad_frame", "the frame is not valid JSON") from None
            place = ".".join(str(part) for part in exc.loc)
            raise FrameError("validation_error", f"{place}: {exc.reason}") from None
        if not isinstance(frame, dict):
            raise FrameError("bad_frame", "the frame must be a JSON object")
        kind = frame.get("type")
        if kind == "ping":
            self.connection.send({"type": "pong"})
        elif kind == "message":
            await self._message(frame)
        elif kind == "cancel":
            await self._cancel(frame)
        elif kind == "resume":
            await self._resume(frame)
        elif kind == "auth":
            raise FrameError("already_authenticated", "this connection is already authenticated")
        else:
            raise FrameError("unknown_type", f"unknown frame type {kind!r}", _ref(frame))

    async def _message(self, frame: dict[str, Any]) -> None:
        ref = _ref(frame)
        content = _field(frame, "content", str, required=True)
        thread_id = _field(frame, "thread_id", str)
        agent = _field(frame, "agent", str)
        multitask = _field(frame, "multitask", str) or "reject"
        client_id = _field(frame, "client_id", str)
        if not content.strip():
            raise FrameError("validation_error", "content must not be empty", ref)
        if len(content) > self.services.settings.max_message_chars:
            limit = self.services.settings.max_message_chars
            raise FrameError("validation_error", f"content is longer than {limit} characters", ref)
        if multitask not in MULTITASK:
            raise FrameError("validation_error", f"multitask must be one of {MULTITASK}", ref)
        if client_id is not None and not 0 < len(client_id) <= 128:
            raise FrameError("validation_error", "client_id must be 1-128 characters", ref)
        principal = await self._checked(ref)
        try:
            submission = Submission(
                content=content,
                thread_id=thread_id,
                agent=agent,
                multitask=multitask,
                client_id=client_id,
            )
            await self.services.runs.submit(principal, submission, acknowledge=self._acknowledge)
        except AtollError as exc:
            raise FrameError.of(exc, ref) from None

    def _acknowledge(self, submitted: Submitted) -> None:
        """Queue the ack of a stored message, before anything of its run (see RunService)."""
        frame = ack_frame(submitted.message)
        with contextlib.suppress(SlowClientError):  # the next send disconnects the client
            self.connection.send(Ack(frame, submitted.run.id, catch_up=not submitted.created))

    async def _cancel(self, frame: dict[str, Any]) -> None:
        run_id = _field(frame, "run_id", str, required=True)
        principal = await self._checked(run_id)
        try:
            run = await self.services.runs.cancel(principal, run_id)
        except AtollError as exc:
            raise FrameError.of(exc, run_id) from None
        self.connection.send({"type": "ack", "run_id": run.id, "thread_id": run.thread_id})

    async def _resume(self, frame: dict[str, Any]) -> None:
        run_id = _field(frame, "run_id", str, required=True)
        after = _field(frame, "after", int) or 0
        if not 0 <= after <= MAX_SEQ:
            raise FrameError("validation_error", f"after must be 0-{MAX_SEQ}", run_id)
        principal = await self._checked(run_id)
        try:
            await self.services.chat.run(principal.user_id, run_id)
        except AtollError as exc:
            raise FrameError.of(exc, run_id) from None
        self.connection.send(Resume(run_id, after))


def ack_frame(message: Message) -> dict[str, Any]:
    """The ``ack`` of the user's ``message`` (with its ``client_id`` when it had one)."""
    frame: dict[str, Any] = {
        "type": "ack",
        "thread_id": message.thread_id,
        "run_id": message.run_id,
        "message_id": message.id,
    }
    if message.client_id is not None:
        frame["client_id"] = message.client_id
    return frame


def origin_allowed(websocket: WebSocket, allowed: list[str]) -> bool:
    """Whether the page that opens this socket may: same origin, or one of ``allowed``.

    Browsers always send ``Origin`` on a WebSocket; other clients need not, and
    are allowed (they carry their own token, never a cookie).
    """
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    host = websocket.headers.get("host", "").lower()
    if host and origin in (f"http://{host}", f"https://{host}"):
        return True
    return origin in {o.strip().rstrip("/").lower() for o in allowed}


async def run_ack(services: Services, user_id: str, run_id: str) -> dict[str, Any] | None:
    """The ack of the user's run ``run_id``, for a socket that sees the run first (no ack yet)."""
    message = await services.chat.input_message(user_id, run_id)
    return ack_frame(message) if message is not None else None


async def _pump(subscription: MemorySubscription, connection: Connection) -> None:
    while True:
        item = await subscription.get()
        if isinstance(item, Notice):
            if item.user_id == connection.user_id:
                connection.send(item.frame)
        elif isinstance(item, SessionEnded):
            await connection.close(CLOSE_AUTH, item.code)
            return
        else:
            connection.send(item)


async def websocket_endpoint(websocket: WebSocket) -> None:
    """The WebSocket of the wire protocol."""
    services: Services = websocket.app.state.services
    if not origin_allowed(websocket, services.settings.allowed_origins):
        await websocket.close(CLOSE_POLICY, "origin not allowed")  # before accept: HTTP 403
        return
    try:
        admitted = services.sockets.admit(client_address(websocket))
    except TooManySocketsError as exc:
        await refuse_upgrade(websocket, exc)
        return
    try:
        await _serve_socket(websocket, services, admitted)
    finally:
        admitted.release()


async def refuse_upgrade(websocket: WebSocket, error: AtollError) -> None:
    """Answer the upgrade with ``error`` as problem JSON (HTTP), where the server can;
    else close before accepting (which the client sees as HTTP 403)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(atoll_error_response(websocket, error))
    else:
        await websocket.close(CLOSE_POLICY, error.code)


async def _serve_socket(websocket: WebSocket, services: Services, admitted: AddressSocket) -> None:
    await websocket.accept()
    if not services.accepting:
        await websocket.close(1001, "server shutting down")
        return
    try:
        credential, principal = await _authenticate(websocket, services)
    except TimeoutError:
        await websocket.close(CLOSE_AUTH_TIMEOUT, "no auth frame in time")
        return
    except AuthenticationError as exc:
        address = client_address(websocket)
        await services.audit.record_sampled(
            "access_denied", key=address, reason=exc.code, path="/api/v1/ws"
        )
        await websocket.close(CLOSE_AUTH, exc.code)
        return
    except UnavailableError as exc:  # the session could not be read: said, then 1013
        await websocket.send_json(error_frame(FrameError.of(exc, None)))
        await websocket.close(CLOSE_TRY_AGAIN, exc.code)
        return
    admitted.authenticated()
    if principal.scopes is not None and "chat" not in principal.scopes:
        await websocket.close(CLOSE_POLICY, "insufficient_scope")  # a read-only API key
        return
    connection = Connection(
        websocket,
        user_id=principal.user_id,
        session_id=principal.session_id,
        connection_id=new_id("con"),
        log=services.event_log,
        metrics=services.metrics,
        queue_size=services.settings.ws_send_queue,
        ack_lookup=partial(run_ack, services),
    )
    try:
        services.connections.add(connection)
    except TooManyConnectionsError:
        await websocket.close(CLOSE_POLICY, "too many connections")
        return
    subscription = await services.subscribe(principal)
    session = Session(services, credential, connection)
    connection.send(
        {
            "type": "connection_established",
            "user_id": principal.user_id,
            "connection_id": connection.connection_id,
        }
    )
    tasks = [
        asyncio.create_task(connection.writer()),
        asyncio.create_task(_pump(subscription, connection)),
        asyncio.create_task(session.read()),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = None if task.cancelled() else task.exception()
            if isinstance(error, SlowClientError | SubscriptionOverflowError):
                await connection.close(CLOSE_POLICY, "client too slow")
            elif isinstance(error, UnavailableError):  # e.g. an ack the database cannot read
                await connection.close(CLOSE_TRY_AGAIN, error.code)
            elif error is not None and not _is_disconnect(error):
                logger.error("websocket %s failed", connection.connection_id, exc_info=error)
                await connection.close(1011, "server error")
    finally:
        for task in tasks:
            task.cancel()
        # asyncio.wait collects the tasks' own cancellations without swallowing this
        # endpoint's: if the endpoint itself is cancelled here, that propagates.
        await asyncio.wait(tasks)
        await subscription.aclose()
        services.connections.remove(connection)
        await connection.close(1000)


def _is_disconnect(error: BaseException) -> bool:
    """Whether ``error`` means the client went away (not a bug of ours)."""
    return isinstance(error, WebSocketDisconnect | WebSocketDisconnected | OSError)
