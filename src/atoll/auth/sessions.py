"""Verified sessions, remembered for a few seconds so that a request needs no database read.

``AuthService.authenticate`` still verifies every token (signature and claims);
what this cache saves is the read of the session and its user behind the
token. Revocation is immediate where it matters:

- a logout or a refresh-token reuse in this process evicts the session before
  the call returns;
- scaled out, the revoking process publishes the session on Redis and every
  process evicts it as the message arrives; a process whose subscription is
  down (or was, since its last message) forgets everything and reads the
  database until it is subscribed again, so a missed message cannot leave a
  revoked session usable;
- whatever changes the database behind Atoll's back (another tool, an
  operator's SQL) is seen within ``ttl`` seconds at most.

An epoch guards the race between a read and a revocation: a read that began
before any invalidation does not put its (maybe revoked) result in the cache.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from atoll.auth.principal import Principal

DEFAULT_TTL = 10.0
MAX_ENTRIES = 100_000


class RevocationNotifier(Protocol):
    """Announces that a session was revoked: what is open with it in this process ends at
    once, and every other process is told (scaled out: Redis pub/sub)."""

    async def publish(self, session_id: str, reason: str) -> None:
        """Announce that ``session_id`` no longer authenticates anyone; ``reason``: why
        (its ``revoked_reason``; ``atoll.auth.service.ended_code`` says what clients are told)."""


class SessionCache:
    """Sessions verified against the database in the last ``ttl`` seconds (see the module)."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        *,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._epoch = 0
        self.trusted = True
        """False while revocations from other processes may be missed: nothing is cached."""
        self.hits = 0
        self.misses = 0

    @property
    def epoch(self) -> int:
        """Changes on every invalidation; take it before reading the database."""
        return self._epoch

    def get(self, session_id: str) -> Principal | None:
        """The cached principal of ``session_id``, if it was verified less than ``ttl`` ago."""
        entry = self._entries.get(session_id)
        if entry is None or not self.trusted:
            self.misses += 1
            return None
        principal, expires = entry
        if self._clock() >= expires:
            del self._entries[session_id]
            self.misses += 1
            return None
        self.hits += 1
        return principal

    def put(self, principal: Principal, *, epoch: int) -> None:
        """Remember ``principal``, read from the database when the epoch was ``epoch``."""
        if self.ttl <= 0 or not self.trusted or epoch != self._epoch:
            return
        self._entries[principal.session_id] = (principal, self._clock() + self.ttl)
        self._entries.move_to_end(principal.session_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, session_id: str) -> None:
        """Forget ``session_id`` (revoked)."""
        self._epoch += 1
        self._entries.pop(session_id, None)

    def clear(self) -> None:
        """Forget every session."""
        self._epoch += 1
        self._entries.clear()

    def distrust(self) -> None:
        """Revocations may be missed from now on (the subscription is down): cache nothing."""
        self.trusted = False
        self.clear()

    def trust(self) -> None:
        """Subscribed again: revocations are seen from now on."""
        self.clear()
        self.trusted = True

    def __len__(self) -> int:
        return len(self._entries)
