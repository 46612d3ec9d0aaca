"""Signing and decoding JWTs (HS256). The only module that decodes tokens.

Decoding checks the signature, the algorithm (HS256 only: ``none`` and others
are refused), ``iss``, ``aud``, ``exp``, ``iat`` and the token type. Whether the
session behind a token is still alive is checked by ``AuthService.authenticate``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt

from atoll.errors import AuthenticationError, TokenExpiredError

TokenType = Literal["access", "refresh"]
ALGORITHM = "HS256"
_REQUIRED = ["exp", "iat", "sub", "jti", "iss", "aud"]


def load_or_create_secret(data_dir: Path) -> str:
    """The signing key kept in ``data_dir/secret.key`` (mode 0600), made on first start."""
    path = data_dir / "secret.key"
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(key)
    return key


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The verified claims of a token."""

    user_id: str
    session_id: str
    jti: str
    type: TokenType
    expires_at: float


class TokenCodec:
    """Issues and verifies this deployment's tokens."""

    def __init__(
        self,
        secret: str,
        *,
        issuer: str,
        audience: str,
        access_ttl: float,
        refresh_ttl: float,
    ) -> None:
        if len(secret) < 32:
            raise ValueError("the signing key must be at least 32 characters")
        self._secret = secret
        self.issuer = issuer
        self.audience = audience
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def issue(
        self,
        *,
        user_id: str,
        session_id: str,
        type: TokenType,
        jti: str,
        issued_at: int | None = None,
    ) -> str:
        """A signed token of ``type`` for the session, issued now or at ``issued_at``.

        The same claims always give the same token (HS256 is deterministic): a refresh
        presented again within the reuse interval gets its pair back this way.
        """
        now = int(time.time()) if issued_at is None else issued_at
        ttl = self.access_ttl if type == "access" else self.refresh_ttl
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id,
            "sid": session_id,
            "jti": jti,
            "typ": type,
            "iat": now,
            "exp": now + int(ttl),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def derived_key(self, purpose: str) -> bytes:
        """A key for ``purpose`` (another signature than tokens'), derived from the signing
        key: one secret to keep, and a signature made for one purpose is never valid for
        another."""
        return hmac.new(self._secret.encode(), purpose.encode(), hashlib.sha256).digest()

    def decode(self, token: str, *, expected: TokenType) -> TokenClaims:
        """Verify ``token``; ``TokenExpiredError`` or ``AuthenticationError`` when it fails."""
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise AuthenticationError("missing or malformed token")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": _REQUIRED, "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpiredError("the token has expired") from None
        except jwt.PyJWTError:
            raise AuthenticationError("the token is invalid") from None
        if claims.get("typ") != expected or not isinstance(claims.get("sid"), str):
            raise AuthenticationError("the token is invalid")
        return TokenClaims(
            user_id=str(claims["sub"]),
            session_id=claims["sid"],
            jti=str(claims["jti"]),
            type=expected,
            expires_at=float(claims["exp"]),
        )
