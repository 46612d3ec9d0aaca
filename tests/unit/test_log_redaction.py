"""Secrets are redacted from logs by their shape (issue 23): API keys, JWTs and bearer
credentials wherever they are in a record, not only under credential-like names."""

from __future__ import annotations

import io
import logging

import pytest

from atoll.server.logs import RedactingFilter, redact

pytestmark = pytest.mark.unit

KEY = "atk_key_Qm9vX2Jhcg.Zm9vYmFyYmF6cXV4LXNlY3JldC12YWx1ZS0xMjM0NTY3ODkw"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c3JfeCIsInR5cCI6InJlZnJlc2gifQ.c2lnbmF0dXJlLXZhbHVl"


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        (f'"GET /api/v1/me?x={KEY} HTTP/1.1" 401', "/api/v1/me?x=atk_[redacted]"),
        (f'"GET /api/v1/threads/{KEY}/messages HTTP/1.1" 404', "/threads/atk_[redacted]/mess"),
        (f"GET /healthz?anything={JWT}&n=1", "?anything=[redacted]&n=1"),
        (f"refresh with {JWT} failed", "refresh with [redacted] failed"),
        (f"Authorization: Bearer {KEY}", "Authorization: Bearer [redacted]"),
        ("authorization: bearer some-opaque-token-value", "bearer [redacted]"),
        (f"/x?y={KEY.replace('.', '%2E')}", "/x?y=atk_[redacted]"),
        ("/auth/oidc/p/callback?code=abc123&state=xyz", "?code=[redacted]&state=[redacted]"),
        ("/me?access_token=t0k&x=1", "?access_token=[redacted]&x=1"),
    ],
)
def test_secrets_are_redacted_by_shape_and_by_name(line: str, kept: str) -> None:
    cleaned = redact(line)
    assert KEY not in cleaned and JWT not in cleaned and "Zm9vYmFy" not in cleaned
    assert kept in cleaned, cleaned


def test_ordinary_text_is_left_alone() -> None:
    for line in (
        "GET /api/v1/threads/thr_AbC-123/messages?limit=20",
        "run run_x ended: the bearer token expired",
        "atk_ is the prefix of API keys",
        "eyJ alone is no token",
    ):
        assert redact(line) == line


def test_the_filter_redacts_message_arguments_and_traceback() -> None:
    """As uvicorn's access log writes records (arguments formatted later) and as any
    library logs an exception that quotes a URL."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("atoll.tests.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning('%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET", f"/me?x={KEY}", "1.1", 401)
        logger.warning(f"token {JWT} in the message itself")
        try:
            raise ValueError(f"could not fetch https://mcp.example.com/?k={KEY}")
        except ValueError:
            logger.exception("MCP call failed with %r", {"authorization": f"Bearer {JWT}"})
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert KEY not in written and JWT not in written, written
    assert '"GET /me?x=atk_[redacted] HTTP/1.1" 401' in written
    assert "token [redacted] in the message" in written
    assert "ValueError: could not fetch https://mcp.example.com/?k=atk_[redacted]" in written
