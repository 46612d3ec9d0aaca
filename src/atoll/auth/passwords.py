"""argon2id password hashing, run off the event loop."""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class Passwords:
    """Hashes and verifies passwords with argon2id in worker threads."""

    def __init__(self, *, time_cost: int, memory_kib: int) -> None:
        """``time_cost`` passes over ``memory_kib`` KiB per hash (``ATOLL_PASSWORD_TIME_COST``,
        ``ATOLL_PASSWORD_MEMORY_KIB``). A hash keeps its own parameters, so changing them
        leaves stored passwords valid."""
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)
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
