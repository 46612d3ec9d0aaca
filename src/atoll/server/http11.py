"""uvicorn's HTTP/1.1 protocol (h11) with the deadlines and limits it lacks.

- A request's headers must be complete within ``header_timeout`` seconds of the
  connection opening (or of the previous answer on a kept-alive connection):
  an idle or trickling (slowloris) connection is answered 408 and closed instead
  of being held for ever.
- A WebSocket upgrade whose header lines the WebSocket parser would refuse
  (over 8 KiB, or more than 128 headers) is answered 431 at once; uvicorn would
  otherwise hand it over and leave the client without an answer.
- Query strings are redacted in uvicorn's logs (``RedactingFilter``), so a token
  someone puts in a URL is never written to a log.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

WS_MAX_LINE = 8192 - 2
"""The longest header line (without CRLF) the WebSocket handshake parser accepts."""
WS_MAX_HEADERS = 128
SENSITIVE_QUERY = re.compile(
    r"(?i)([?&](?:access_token|refresh_token|id_token|token|api_key|apikey|key|password|secret)"
    r"=)[^&\s\"]*"
)


def redact_query(text: str) -> str:
    """``text`` with the values of credential-like query parameters replaced."""
    return SENSITIVE_QUERY.sub(r"\1[redacted]", text)


class RedactingFilter(logging.Filter):
    """Redacts credential-like query parameters in a log record's arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        return True


def install_log_redaction() -> None:
    """Add ``RedactingFilter`` to uvicorn's loggers (once)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        target = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in target.filters):
            target.addFilter(RedactingFilter())


class GuardedH11Protocol(H11Protocol):
    """``H11Protocol`` with a header deadline and WebSocket header limits (module docs)."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        too_long = len(event.target) + len(event.method) + 10 > WS_MAX_LINE or any(
            len(name) + len(value) + 2 > WS_MAX_LINE for name, value in self.headers
        )
        if too_long or len(self.headers) > WS_MAX_HEADERS:
            self._disarm_header_deadline()
            body = b"request header fields too large for a WebSocket upgrade"
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()
            return
        self._disarm_header_deadline()
        super().handle_websocket_upgrade(event)


def guarded_h11(header_timeout: float) -> type[GuardedH11Protocol]:
    """``GuardedH11Protocol`` with its header deadline set to ``header_timeout`` seconds."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": header_timeout})
