"""Per-user run limits: the settings, and the slots that enforce concurrency per user.

The limit is per *user*, not per engine: every engine a factory builds shares
the factory's ``UserRunSlots``; a scaled-out deployment plugs in a cluster-wide
implementation of ``RunSlots``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol, Self

from atoll.config import Settings
from atoll.errors import RunLimitError

OverflowPolicy = Literal["wait", "reject"]


@dataclass(frozen=True, slots=True)
class RuntimeLimits:
    """The runtime's limits (defaults from the product spec)."""

    max_concurrent_runs: int = 3
    overflow: OverflowPolicy = "wait"
    run_timeout: float = 300.0
    heartbeat_timeout: float = 30.0
    tool_timeout: float = 30.0
    tool_calls_per_minute: int = 120
    monitor_interval: float = 1.0
    record_retention: float = 60.0
    tool_processes: int = 2
    tool_processes_warm: bool = False
    """Start the tool workers when the factory starts (servers do; a library user may not)."""
    tool_memory_mb: int | None = 1024

    def __post_init__(self) -> None:
        if self.max_concurrent_runs < 1:
            raise ValueError("max_concurrent_runs must be at least 1")
        if self.overflow not in ("wait", "reject"):
            raise ValueError("overflow must be 'wait' or 'reject'")
        for name in ("run_timeout", "heartbeat_timeout", "tool_timeout", "monitor_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The limits configured by ``ATOLL_*`` settings."""
        return cls(
            max_concurrent_runs=settings.max_concurrent_runs,
            overflow=settings.run_overflow,
            run_timeout=settings.run_timeout,
            heartbeat_timeout=settings.heartbeat_timeout,
            tool_timeout=settings.tool_timeout,
            tool_calls_per_minute=settings.tool_calls_per_minute,
            monitor_interval=min(1.0, settings.heartbeat_timeout / 3),
            record_retention=settings.tracker_retention,
            tool_processes=settings.tool_processes,
            tool_processes_warm=settings.tool_processes_warm,
            tool_memory_mb=settings.tool_memory_mb or None,
        )


class RunSlots(Protocol):
    """Counts each user's alive runs against the limit.

    ``run_id`` names the slot's holder: a cluster-wide implementation keeps a lease
    per run (so a dead worker's slots expire); the in-process one only counts.
    ``limit`` is the user's (their plan's runs at once); None: the slots' own.
    """

    async def try_acquire(self, user_id: str, run_id: str, limit: int | None = None) -> None:
        """Take a slot now or raise ``RunLimitError``."""

    async def acquire(self, user_id: str, run_id: str, limit: int | None = None) -> None:
        """Take a slot, waiting until one is free."""

    async def release(self, user_id: str, run_id: str) -> None:
        """Give a slot back."""


def run_limit_error(limit: int) -> RunLimitError:
    """The error of a run over its user's concurrency limit (one wording everywhere)."""
    return RunLimitError(
        f"you already have {limit} runs in progress; wait for one to finish",
        details={"limit": limit},
    )


class UserRunSlots:
    """In-process ``RunSlots``: at most ``limit`` alive runs per user."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._active: dict[str, int] = {}
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    def active(self, user_id: str) -> int:
        """How many slots ``user_id`` holds."""
        return self._active.get(user_id, 0)

    def waiting(self, user_id: str) -> int:
        """How many runs of ``user_id`` wait for a slot."""
        return len(self._waiters.get(user_id, ()))

    async def try_acquire(self, user_id: str, run_id: str = "", limit: int | None = None) -> None:
        """Take a slot now or raise ``RunLimitError``."""
        limit = limit or self.limit
        if self.active(user_id) >= limit or self._waiters.get(user_id):
            raise run_limit_error(limit)
        self._active[user_id] = self.active(user_id) + 1

    async def acquire(self, user_id: str, run_id: str = "", limit: int | None = None) -> None:
        """Take a slot, waiting in line behind the user's earlier runs."""
        if self.active(user_id) < (limit or self.limit) and not self._waiters.get(user_id):
            self._active[user_id] = self.active(user_id) + 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiters.setdefault(user_id, deque())
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release_now(user_id)  # the slot was handed over just as we were cancelled
            else:
                # release() may already have popped this (cancelled) waiter and skipped it.
                if waiter in queue:
                    queue.remove(waiter)
                if not queue and self._waiters.get(user_id) is queue:
                    del self._waiters[user_id]
            raise

    async def release(self, user_id: str, run_id: str = "") -> None:
        """Give a slot back; hands it straight to the next waiter of the same user."""
        self.release_now(user_id)

    def release_now(self, user_id: str) -> None:
        """``release``, callable where awaiting is not possible."""
        queue = self._waiters.get(user_id)
        while queue:
            waiter = queue.popleft()
            if not queue:
                self._waiters.pop(user_id, None)
            if not waiter.done():
                waiter.set_result(None)
                return
        remaining = self.active(user_id) - 1
        if remaining > 0:
            self._active[user_id] = remaining
        else:
            self._active.pop(user_id, None)
