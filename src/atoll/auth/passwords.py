"""argon2id password hashing, run off the event loop."""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class Passwords:
    """Hashes and verifies passwords with argon2id in worker threads."""

    def __init__(self, *, time_cost: int = 2, memory_cost: int = 19_456) -> None:
        # OWASP's argon2id minimum (19 MiB, t=2); raise in production as hardware allows.
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost)
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        """The argon2id hash of ``password``."""
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, hashed: str | None, password: str) -> bool:
        """Whether ``password`` matches; with ``hashed=None`` it does the same work and fails.

        Doing the work for unknown emails too keeps both answers equally slow.
        """
        known = hashed is not None
        if hashed is None:
            if self._dummy is None:
                self._dummy = await self.hash(secrets.token_urlsafe(16))
            hashed = self._dummy
        try:
            matched = await asyncio.to_thread(self._hasher.verify, hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return matched and known
