"""Per-key rate limiting (GCRA), shared by tools, messages and logins, and cost budgets
(the same algorithm, charged with measured cost instead of one per hit).

``LocalRateLimiter`` keeps its state in the instance that the app or engine
factory builds; the scale-out deployment plugs in a Redis implementation of the
same ``RateLimiter`` protocol.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


class RateLimiter(Protocol):
    """Counts hits per key; answers None when allowed, else seconds to wait.

    ``limit`` is the hits per period for this key (a plan's); None: the limiter's own.
    """

    async def hit(self, key: str, limit: int | None = None) -> float | None:
        """Record one hit for ``key``; None if allowed, else the retry-after in seconds."""


class CostBudget(Protocol):
    """A budget of measured cost (CPU seconds) per key that refills evenly over a period.

    Cost is charged after it is spent (a run's CPU is known when it ends); new work is
    refused while the key is over budget, until enough has refilled.
    """

    async def charge(self, key: str, cost: float) -> None:
        """Add ``cost`` to what ``key`` has spent."""

    async def check(self, key: str) -> float | None:
        """None if ``key`` is within its budget, else the seconds until it is."""


class LocalCostBudget:
    """``budget`` of cost per ``period`` seconds per key, in this process (GCRA by cost).

    One timestamp per key: charging ``c`` moves it ``c * period / budget`` seconds ahead
    (from now, if it lies behind); the key is over budget while it is more than
    ``period`` ahead of now. So ``budget`` can be spent at once, and it refills evenly.
    """

    def __init__(
        self, budget: float, period: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if budget <= 0 or period <= 0:
            raise ValueError("budget and period must be positive")
        self.budget = budget
        self.period = period
        self._clock = clock
        self._tat: dict[str, float] = {}

    async def charge(self, key: str, cost: float) -> None:
        """Add ``cost`` to what ``key`` has spent."""
        now = self._clock()
        if len(self._tat) >= 4096:
            self._tat = {k: t for k, t in self._tat.items() if t > now}
        tat = max(self._tat.get(key, now), now)
        self._tat[key] = tat + max(cost, 0.0) * self.period / self.budget

    async def check(self, key: str) -> float | None:
        """None if ``key`` is within its budget, else the seconds until it is."""
        over = self._tat.get(key, 0.0) - self._clock() - self.period
        return over if over > 0 else None


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
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._hits_since_prune = 0

    async def hit(self, key: str, limit: int | None = None) -> float | None:
        """Record one hit for ``key``; None if allowed, else the retry-after in seconds."""
        return self.hit_now(key, limit)

    def hit_now(self, key: str, limit: int | None = None) -> float | None:
        """Synchronous ``hit`` for callers that are not coroutines."""
        now = self._clock()
        interval = self.period / (limit or self.limit)
        tat = max(self._tat.get(key, now), now)
        allow_at = tat + interval - self.period
        if allow_at > now:
            return allow_at - now
        self._tat[key] = tat + interval
        self._hits_since_prune += 1
        if self._hits_since_prune >= 1024:
            self._prune(now)
        return None

    def _prune(self, now: float) -> None:
        self._hits_since_prune = 0
        for key in [k for k, tat in self._tat.items() if tat <= now]:
            del self._tat[key]


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer of ``FailureCounter.reserve``: a token, or how long to wait."""

    token: str | None
    retry_after: float = 0.0


class FailureCounter(Protocol):
    """Counts attempts per key over a sliding window (failed logins), reserving first.

    An attempt *reserves* a place under every key it counts against before the
    work it limits is done (the password hash), so concurrent attempts cannot all
    pass a check made before any of them is counted. A reservation that turns out
    not to be a failure is released; a failure simply keeps its place.
    """

    async def reserve(self, limits: Mapping[str, int]) -> Reservation:
        """Take one place under each key (``key -> limit``), all or none."""

    async def release(self, keys: Iterable[str], token: str) -> None:
        """Give back the places ``token`` took under ``keys``."""

    async def reset(self, key: str) -> None:
        """Forget every attempt counted under ``key``."""


class SlidingWindowCounter:
    """In-process ``FailureCounter``: attempts per key over the last ``period`` seconds."""

    def __init__(self, period: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self._events: dict[str, dict[str, float]] = {}
        """key -> token -> time of the attempt (in the order they were made)."""
        self._since_prune = 0

    def _window(self, key: str, now: float) -> dict[str, float]:
        events = self._events.get(key)
        if events is None:
            return {}
        cutoff = now - self.period
        for token in [t for t, at in events.items() if at <= cutoff]:
            del events[token]
        if not events:
            del self._events[key]
        return events

    async def reserve(self, limits: Mapping[str, int]) -> Reservation:
        """Take one place under each key (``key -> limit``), all or none."""
        now = self._clock()
        self._since_prune += 1
        if self._since_prune >= 1024:
            self._since_prune = 0
            for key in list(self._events):
                self._window(key, now)
        waits = [
            min(window.values()) + self.period - now
            for key, limit in limits.items()
            if len(window := self._window(key, now)) >= limit
        ]
        if waits:
            return Reservation(None, max(0.0, max(waits)))
        token = secrets.token_hex(8)
        for key in limits:
            self._events.setdefault(key, {})[token] = now
        return Reservation(token)

    async def release(self, keys: Iterable[str], token: str) -> None:
        """Give back the places ``token`` took under ``keys``."""
        for key in keys:
            events = self._events.get(key)
            if events is not None:
                events.pop(token, None)
                if not events:
                    del self._events[key]

    async def reset(self, key: str) -> None:
        """Forget every attempt counted under ``key``."""
        self._events.pop(key, None)

    def __len__(self) -> int:
        return len(self._events)
