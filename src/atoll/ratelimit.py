"""Per-key rate limiting (GCRA), shared by tools, messages and logins.

``LocalRateLimiter`` keeps its state in the instance that the app or engine
factory builds; the scale-out deployment plugs in a Redis implementation of the
same ``RateLimiter`` protocol.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol


class RateLimiter(Protocol):
    """Counts hits per key; answers None when allowed, else seconds to wait."""

    async def hit(self, key: str) -> float | None:
        """Record one hit for ``key``; None if allowed, else the retry-after in seconds."""


class LocalRateLimiter:
    """``limit`` hits per ``period`` seconds per key, in this process (GCRA).

    GCRA keeps one timestamp per key (the "theoretical arrival time"), allows
    bursts up to ``limit`` and refills smoothly.
    """

    def __init__(
        self, limit: int, period: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self._interval = period / limit
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._hits_since_prune = 0

    async def hit(self, key: str) -> float | None:
        """Record one hit for ``key``; None if allowed, else the retry-after in seconds."""
        return self.hit_now(key)

    def hit_now(self, key: str) -> float | None:
        """Synchronous ``hit`` for callers that are not coroutines."""
        now = self._clock()
        tat = max(self._tat.get(key, now), now)
        allow_at = tat + self._interval - self.period
        if allow_at > now:
            return allow_at - now
        self._tat[key] = tat + self._interval
        self._hits_since_prune += 1
        if self._hits_since_prune >= 1024:
            self._prune(now)
        return None

    def _prune(self, now: float) -> None:
        self._hits_since_prune = 0
        for key in [k for k, tat in self._tat.items() if tat <= now]:
            del self._tat[key]


class FailureCounter(Protocol):
    """Counts events per key over a sliding window (failed logins)."""

    async def count(self, key: str) -> int:
        """Events for ``key`` within the window."""

    async def retry_after(self, key: str) -> float:
        """Seconds until the oldest event of ``key`` leaves the window."""

    async def add(self, key: str) -> None:
        """Record one event for ``key``."""

    async def reset(self, key: str) -> None:
        """Forget ``key``'s events."""


class SlidingWindowCounter:
    """In-process ``FailureCounter``: events per key over the last ``period`` seconds."""

    def __init__(self, period: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def _window(self, key: str) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        cutoff = self._clock() - self.period
        while events and events[0] <= cutoff:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    async def count(self, key: str) -> int:
        """Events for ``key`` within the window."""
        events = self._window(key)
        return len(events) if events else 0

    async def retry_after(self, key: str) -> float:
        """Seconds until the oldest event of ``key`` leaves the window."""
        events = self._window(key)
        return max(0.0, events[0] + self.period - self._clock()) if events else 0.0

    async def add(self, key: str) -> None:
        """Record one event for ``key``."""
        self._events.setdefault(key, deque()).append(self._clock())

    async def reset(self, key: str) -> None:
        """Forget ``key``'s events."""
        self._events.pop(key, None)
