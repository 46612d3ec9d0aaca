"""Device cookies (OWASP, "Slow Down Online Guessing Attacks with Device Cookies").

A successful password login gives the client a cookie that says "this client once
logged in to this account": a random nonce and the time it was issued, signed with
a key derived from the server's signing key for this purpose only, over the
account's email. The email is not in the cookie; the signature binds it, so a
cookie made for one account is worth nothing for another.

A login that presents a valid cookie for the email it tries is a *trusted client*:
its failures count against its own nonce only, and the per-address, per-email and
per-account limits that strangers filled do not lock it out (the owner behind a
shared NAT still gets in). A trusted client that fails too often loses that trust
for the window and is limited like everyone else; an untrusted client (no cookie,
another account's, an expired or forged one) is limited as before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable

DEVICE_COOKIE = "atoll_device"
DEVICE_COOKIE_PATH = "/api/v1/auth"
DEVICE_TTL = 90 * 24 * 3600.0
"""How long a device cookie is trusted after the login that issued it (each login renews it)."""
_SHAPE = re.compile(r"^([A-Za-z0-9_-]{22})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})$")


def _mac(key: bytes, email: str, nonce: str, issued: int) -> str:
    digest = hmac.new(key, f"{email}\n{nonce}\n{issued}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class DeviceCookies:
    """Issues and verifies device cookies with one key (see the module)."""

    def __init__(
        self, key: bytes, *, ttl: float = DEVICE_TTL, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key
        self.ttl = ttl
        self._clock = clock

    def issue(self, email: str) -> str:
        """A new cookie value for a client that just logged in as ``email`` (canonical)."""
        nonce, issued = secrets.token_urlsafe(16), int(self._clock())
        return f"{nonce}.{issued}.{_mac(self._key, email, nonce, issued)}"

    def nonce(self, cookie: str | None, email: str) -> str | None:
        """The nonce of ``cookie`` when it is a valid, unexpired cookie for ``email``; else
        None (the client is then untrusted)."""
        match = _SHAPE.fullmatch(cookie or "")
        if match is None:
            return None
        nonce, issued = match.group(1), int(match.group(2))
        if not 0 <= self._clock() - issued <= self.ttl:
            return None
        expected = _mac(self._key, email, nonce, issued)
        return nonce if hmac.compare_digest(expected, match.group(3)) else None
