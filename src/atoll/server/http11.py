"""uvicorn's HTTP/1.1 protocol (h11) with the deadlines and limits it lacks.

- A request's headers must be complete within ``header_timeout`` seconds of the
  connection opening (or of the previous answer on a kept-alive connection):
  an idle or trickling (slowloris) connection is answered 408 and closed instead
  of being held for ever.
- A request head over the limits — all of it over ``max_header_bytes``, a header
  line over ``MAX_HEADER_LINE``, more than ``max_headers`` header lines — is answered
  431 with problem JSON (``headers_too_large``; a request line over ``MAX_HEADER_LINE``:
  414 ``uri_too_long``) and the connection closed, before anything reaches the app:
  plain HTTP and WebSocket upgrades alike, however the bytes arrive. (h11 alone
  refused a head only while it was incomplete, so its limit held or not depending on
  how TCP cut the bytes, with a text/plain 400; and the WebSocket handshake parser
  has its own limits, which these stay within.)

Logs (uvicorn's access log included) are redacted by ``atoll.server.logs``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol

from atoll.errors import (
    AtollError,
    HeadersTooLargeError,
    MalformedRequestError,
    UriTooLongError,
)
from atoll.server.problems import problem_body

MAX_HEADER_LINE = 8192 - 2
"""The longest request or header line (without CRLF): what the WebSocket handshake
parser (``websockets``) accepts, so an upgrade is refused by us, with an answer."""
WS_MAX_HEADERS = 128
"""The most header lines the WebSocket handshake parser accepts (``max_headers`` at most)."""


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    """How large a request head may be (``Settings.max_header_bytes``, ``max_headers``)."""

    max_bytes: int
    max_count: int
    max_line: int = MAX_HEADER_LINE

    def refusal(self, request: h11.Request) -> AtollError | None:
        """Why ``request``'s head is over the limits, or None."""
        line = len(request.method) + len(request.target) + len(b"  HTTP/1.1")
        fields = request.headers.raw_items()
        lines = [len(name) + len(value) + 2 for name, value in fields]
        if line > self.max_line:
            return UriTooLongError(f"the request line is longer than {self.max_line} bytes")
        if len(fields) > self.max_count:
            return HeadersTooLargeError(f"more than {self.max_count} header lines")
        if max(lines, default=0) > self.max_line:
            return HeadersTooLargeError(f"a header line is longer than {self.max_line} bytes")
        if line + sum(lines) + 2 * (len(lines) + 2) > self.max_bytes:
            detail = f"the request line and headers are larger than {self.max_bytes} bytes"
            return HeadersTooLargeError(detail)
        return None


class BoundedConnection(h11.Connection):
    """h11's server side, refusing request heads over ``limits`` whether they arrive
    whole or in pieces; ``refused`` says why (the protocol answers with it)."""

    def __init__(self, limits: HeaderLimits) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=limits.max_bytes)
        self.limits = limits
        self.refused: AtollError | None = None

    def next_event(self) -> Any:
        """h11's next event; ``RemoteProtocolError`` for a head over the limits."""
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:  # an incomplete head already over max_bytes
                detail = f"the request head is larger than {self.limits.max_bytes} bytes"
                self.refused = HeadersTooLargeError(detail)
            raise
        if isinstance(event, h11.Request):
            self.refused = self.limits.refusal(event)
            if self.refused is not None:
                status = self.refused.status
                raise h11.RemoteProtocolError(self.refused.message, error_status_hint=status)
        return event


def refusal_answer(error: AtollError) -> bytes:
    """The whole HTTP/1.1 answer (problem JSON, connection closed) refusing a request head."""
    body = orjson.dumps(problem_body(error.status, error.code, error.message))
    reason = HTTPStatus(error.status).phrase.encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/problem+json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s"
        % (error.status, reason, len(body), body)
    )


class GuardedH11Protocol(H11Protocol):
    """``H11Protocol`` with a header deadline and header limits (module docs)."""

    header_timeout: float = 10.0
    header_limits: HeaderLimits = HeaderLimits(max_bytes=16 * 1024, max_count=100)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = BoundedConnection(self.header_limits)
        self._header_deadline: asyncio.TimerHandle | None = None

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self._header_deadline is not None and self.conn.their_state is not h11.IDLE:
            self._disarm_header_deadline()  # the headers are in

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()  # the next request on this connection gets a deadline too

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """The answer to a request h11 refused, as problem JSON like every error: 431 or 414
        for a head over the limits, 400 ``malformed_request`` for anything else (uvicorn
        wrote a text/plain 400)."""
        assert isinstance(self.conn, BoundedConnection)
        refused = self.conn.refused or MalformedRequestError("the request is not valid HTTP/1.1")
        self._disarm_header_deadline()
        self.transport.write(refusal_answer(refused))
        self.transport.close()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm_header_deadline()
        super().handle_websocket_upgrade(event)


def guarded_h11(
    header_timeout: float, *, max_header_bytes: int, max_headers: int
) -> type[GuardedH11Protocol]:
    """``GuardedH11Protocol`` with this header deadline (seconds) and these head limits."""
    limits = HeaderLimits(max_bytes=max_header_bytes, max_count=max_headers)
    attributes = {"header_timeout": header_timeout, "header_limits": limits}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), attributes)
