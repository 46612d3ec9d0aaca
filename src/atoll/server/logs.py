"""Secrets never reach a log: every record is redacted by the shape of what Atoll issues.

A credential can land in a log line wherever a client or a library puts it — a query
parameter of any name (``?x=atk_…``), a path (``/threads/atk_…``), an exception
message that quotes a URL — so redaction goes by what secrets look like, not only by
what they are called: API keys (``atk_<key id>.<secret>``), JWTs (access and refresh
tokens, ID tokens: ``eyJ….….…``) and bearer credentials, wherever they appear.
Secrets without a shape of their own (an OpenID authorisation ``code``, a password in
a URL) are redacted by the name of the query parameter that carries them.

``redact`` is the one function; ``RedactingFilter`` applies it to a record's message,
arguments, traceback and stack; ``install_log_redaction`` puts the filter on the
handlers of the root logger and of uvicorn's (error and access) loggers, so every
record that is written — Atoll's, uvicorn's, a library's — passes through it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from atoll.auth.keys import KEY_PREFIX

REDACTED = "[redacted]"
SECRET_SHAPES = re.compile(
    rf"{re.escape(KEY_PREFIX)}[A-Za-z0-9_-]+(?:\.|%2[Ee])[A-Za-z0-9_-]+"  # an API key
    r"|eyJ[A-Za-z0-9_-]+(?:\.|%2[Ee])[A-Za-z0-9_-]+(?:\.|%2[Ee])[A-Za-z0-9_-]*"  # a JWT
    r"|(?i:\bbearer)(?:\s|%20|\+)+[A-Za-z0-9._~+/=%-]{8,}"  # any bearer credential
)
"""What the secrets Atoll issues or accepts look like, wherever they are in a text."""
SENSITIVE_QUERY = re.compile(
    r"(?i)([?&;](?:access_token|refresh_token|id_token|token|api_key|apikey|key|password|"
    r"secret|code|state|client_secret)=)[^&;\s\"']*"
)
"""Query parameters named like credentials (for secrets without a shape of their own)."""


def redact(text: str) -> str:
    """``text`` with every secret replaced by ``[redacted]``: by shape, then by name."""
    text = SECRET_SHAPES.sub(_masked, text)
    return SENSITIVE_QUERY.sub(rf"\1{REDACTED}", text)


_BEARER = re.compile(r"(?i)bearer(?:\s|%20|\+)+")


def _masked(found: re.Match[str]) -> str:
    secret = found.group()
    if secret.startswith(KEY_PREFIX):
        return KEY_PREFIX + REDACTED
    bearer = _BEARER.match(secret)
    return (bearer.group() if bearer else "") + REDACTED


def _redacted_argument(value: Any) -> Any:
    """A log argument with its secrets redacted; numbers (``%d``) and clean values as
    they are (so the record formats exactly as before)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


class RedactingFilter(logging.Filter):
    """Applies ``redact`` to a record's message, arguments, traceback and stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted_argument(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redacted_argument(v) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")
"""Whose handlers write records: the root logger's (every library's records reach it)
and uvicorn's own, which do not propagate."""


def install_log_redaction() -> None:
    """Put one ``RedactingFilter`` on every handler of ``LOGGERS`` (again: no duplicate)."""
    for name in LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
