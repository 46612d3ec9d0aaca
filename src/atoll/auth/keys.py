"""Personal API keys: ``atk_<key id>.<secret>``, for programs.

A key is made by a signed-in user, shown once, and stored as the SHA-256 of the
whole key. It authenticates through ``AuthService.authenticate`` like an access
token (the one validation), with the scopes it was given: ``read`` (GET requests)
and ``chat`` (messages, runs, the socket). A key never manages keys, identities or
organisations. Revoking one refuses it from the next request on (keys are read from
the database on every request: no cache to wait for).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from atoll.errors import NotFoundError, TooManyKeysError
from atoll.runtime.ids import new_id
from atoll.store.api_keys import ApiKeyStore
from atoll.store.audit import AuditLog
from atoll.store.db import Database
from atoll.store.models import ApiKey, utcnow

KEY_PREFIX = "atk_"
SCOPES = ("read", "chat")
MAX_KEYS = 20
"""Live keys per user."""


def key_digest(key: str) -> str:
    """What is stored of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id a key names (``atk_<id>.<secret>``), or None when it is not a key."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, dot, secret = key[len(KEY_PREFIX) :].partition(".")
    if not dot or not key_id.startswith("key_") or len(key_id) > 64 or not secret:
        return None
    return key_id


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: the row, and the key itself (shown once)."""

    row: ApiKey
    key: str


class ApiKeys:
    """A user's keys: make, list, revoke (audited)."""

    def __init__(self, db: Database, audit: AuditLog) -> None:
        self._keys = ApiKeyStore(db)
        self._audit = audit

    async def create(
        self, user_id: str, name: str, scopes: list[str], expires_in_days: int | None
    ) -> NewKey:
        """A new key for ``user_id`` (``TooManyKeysError`` past ``MAX_KEYS`` live ones)."""
        key_id = new_id("key")
        key = f"{KEY_PREFIX}{key_id}.{secrets.token_urlsafe(32)}"
        now = utcnow()
        row = ApiKey(
            id=key_id, user_id=user_id, name=name, key_hash=key_digest(key),
            scopes=sorted(set(scopes)), created_at=now,
            expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
        )  # fmt: skip
        await self._keys.add(row, limit=MAX_KEYS, refuse=too_many)
        await self._audit.record("key_created", user_id=user_id, key_id=key_id, scopes=row.scopes)
        return NewKey(row, key)

    async def list(self, user_id: str) -> list[ApiKey]:
        """The user's keys that are not revoked, newest first."""
        return await self._keys.live(user_id)

    async def revoke(self, user_id: str, key_id: str) -> None:
        """Revoke one of the user's keys; another user's (or none) is ``NotFoundError``."""
        if not await self._keys.revoke(user_id, key_id):
            raise NotFoundError("key not found")
        await self._audit.record("key_revoked", user_id=user_id, key_id=key_id)


def usable(row: ApiKey, now: datetime) -> bool:
    """Whether a key row may authenticate now."""
    return row.revoked_at is None and (row.expires_at is None or row.expires_at > now)


def too_many() -> NoReturn:
    """What a user with ``MAX_KEYS`` live keys is told when they ask for another."""
    raise TooManyKeysError(
        f"you have {MAX_KEYS} keys already; revoke one first", details={"limit": MAX_KEYS}
    )
