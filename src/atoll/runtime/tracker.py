"""``AgentExecutionTracker``: the record of every run's lifecycle, and its monitor.

The tracker is the single place that moves a run between states. It keeps, per
run, the state, the time of every transition, the last heartbeat and the error.
A monitor task marks runs DEAD when their heartbeat goes stale (a crashed
worker or a blocked event loop) and TIMEOUT when they outlive the run timeout;
listeners (the engine factory) are told so that the run still ends with exactly
one terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atoll.errors import RunDeadError, RunNotFoundError, RunTimeoutError
from atoll.runtime.state import ExecutionState, check_transition

logger = logging.getLogger(__name__)

ExpiryListener = Callable[["ExecutionRecord"], None]


@dataclass(slots=True)
class ExecutionRecord:
    """What the tracker knows about one run."""

    run_id: str
    user_id: str
    thread_id: str
    agent: str
    state: ExecutionState
    created_at: datetime
    last_heartbeat: float
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, Any] | None = None
    transitions: list[tuple[ExecutionState, datetime]] = field(default_factory=list)

    @property
    def is_alive(self) -> bool:
        """True while the run has not reached a terminal state."""
        return self.state.is_alive

    @property
    def started_wall(self) -> datetime | None:
        """When the run reached STARTING (wall clock), if it did."""
        return next((t for s, t in self.transitions if s is ExecutionState.STARTING), None)


class AgentExecutionTracker:
    """Tracks every run through the nine-state lifecycle; detects DEAD and TIMEOUT.

    ``clock`` is a monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        *,
        heartbeat_timeout: float = 30.0,
        run_timeout: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if heartbeat_timeout <= 0 or run_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.heartbeat_timeout = heartbeat_timeout
        self.run_timeout = run_timeout
        self._clock = clock
        self._records: dict[str, ExecutionRecord] = {}
        self._listeners: list[ExpiryListener] = []
        self._finished_counts: Counter[ExecutionState] = Counter()

    # -- recording ---------------------------------------------------------

    def register(self, *, run_id: str, user_id: str, thread_id: str, agent: str) -> ExecutionRecord:
        """Start tracking a new run in PENDING."""
        if run_id in self._records:
            raise ValueError(f"run {run_id} is already tracked")
        now = self._clock()
        wall = datetime.now(UTC)
        record = ExecutionRecord(
            run_id=run_id,
            user_id=user_id,
            thread_id=thread_id,
            agent=agent,
            state=ExecutionState.PENDING,
            created_at=wall,
            last_heartbeat=now,
            transitions=[(ExecutionState.PENDING, wall)],
        )
        self._records[run_id] = record
        return record

    def get(self, run_id: str) -> ExecutionRecord:
        """The record of ``run_id``; ``RunNotFoundError`` when it is not tracked."""
        try:
            return self._records[run_id]
        except KeyError:
            raise RunNotFoundError(f"run {run_id} is not tracked") from None

    def find(self, run_id: str) -> ExecutionRecord | None:
        """The record of ``run_id`` or None."""
        return self._records.get(run_id)

    def transition(
        self,
        run_id: str,
        target: ExecutionState,
        *,
        error: dict[str, Any] | None = None,
    ) -> ExecutionRecord:
        """Move a run to ``target``; ``TypeError`` or ``IllegalTransitionError`` if not allowed."""
        record = self.get(run_id)
        check_transition(record.state, target)
        now = self._clock()
        record.state = target
        record.transitions.append((target, datetime.now(UTC)))
        record.last_heartbeat = now
        if target is ExecutionState.STARTING:
            record.started_at = now
        if target.is_terminal:
            record.finished_at = now
            record.error = error
            self._finished_counts[target] += 1
        return record

    def heartbeat(self, run_id: str) -> None:
        """Note that the run is still making progress."""
        record = self._records.get(run_id)
        if record is not None and record.state.is_alive:
            record.last_heartbeat = self._clock()

    # -- monitoring ----------------------------------------------------------

    def add_listener(self, listener: ExpiryListener) -> Callable[[], None]:
        """Call ``listener(record)`` after the monitor marks a run DEAD or TIMEOUT.

        Returns a function that removes the listener.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def check(self) -> list[ExecutionRecord]:
        """One monitor pass: mark stale runs DEAD and overdue runs TIMEOUT; return them."""
        now = self._clock()
        expired: list[ExecutionRecord] = []
        for record in list(self._records.values()):
            state = record.state
            if state not in (
                ExecutionState.STARTING,
                ExecutionState.RUNNING,
                ExecutionState.COMPLETING,
            ):
                continue
            if now - record.last_heartbeat > self.heartbeat_timeout:
                target = ExecutionState.DEAD
                error = {
                    "code": RunDeadError.code,
                    "message": f"no heartbeat for {now - record.last_heartbeat:.1f}s",
                }
            elif (
                state is not ExecutionState.COMPLETING
                and record.started_at is not None
                and now - record.started_at > self.run_timeout
            ):
                target = ExecutionState.TIMEOUT
                error = {
                    "code": RunTimeoutError.code,
                    "message": f"run exceeded the run timeout of {self.run_timeout:g}s",
                }
            else:
                continue
            self.transition(record.run_id, target, error=error)
            expired.append(record)
        for record in expired:
            logger.warning("run %s marked %s: %s", record.run_id, record.state.name, record.error)
            for listener in list(self._listeners):
                try:
                    listener(record)
                except Exception:
                    logger.exception("tracker listener failed for run %s", record.run_id)
        return expired

    @contextlib.asynccontextmanager
    async def monitoring(
        self,
        interval: float = 1.0,
        *,
        pulse: Callable[[], Iterable[str]] | None = None,
        retention: float = 3600.0,
    ) -> AsyncIterator[None]:
        """Run the monitor in a background task for the duration of the block.

        Each tick first checks for DEAD and TIMEOUT runs, then heartbeats the runs
        that ``pulse`` names (the runs alive in this process). Checking first is
        what lets a blocked event loop be detected: after the block, the stale
        heartbeats are seen before they are refreshed. Terminal records older than
        ``retention`` seconds are forgotten, checked every tenth of the retention (at
        most every minute) so that none outlives it by more than that: the tracker's size
        is about ``retention`` x the run rate, not twice it.
        """
        task = asyncio.create_task(
            self._monitor(interval, pulse, retention), name="atoll-tracker-monitor"
        )
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _monitor(
        self, interval: float, pulse: Callable[[], Iterable[str]] | None, retention: float
    ) -> None:
        last_cleanup = self._clock()
        while True:
            await asyncio.sleep(interval)
            self.check()
            if pulse is not None:
                for run_id in pulse():
                    self.heartbeat(run_id)
            if self._clock() - last_cleanup >= min(retention / 10, 60.0):
                self.cleanup(retention)
                last_cleanup = self._clock()

    # -- statistics and cleanup ---------------------------------------------

    def counts(self) -> dict[ExecutionState, int]:
        """Number of tracked runs in each state (every state present, zero included)."""
        counts = dict.fromkeys(ExecutionState, 0)
        for record in self._records.values():
            counts[record.state] += 1
        return counts

    def success_rate(self) -> float | None:
        """COMPLETED ÷ all runs finished since start (cleaned-up ones included); None if none."""
        finished = sum(self._finished_counts.values())
        if finished == 0:
            return None
        return self._finished_counts[ExecutionState.COMPLETED] / finished

    def finished_totals(self) -> dict[ExecutionState, int]:
        """How many runs reached each terminal state since the tracker was created."""
        return {s: self._finished_counts[s] for s in ExecutionState if s.is_terminal}

    def cleanup(self, older_than: float) -> int:
        """Forget terminal runs that finished more than ``older_than`` seconds ago."""
        cutoff = self._clock() - older_than
        stale = [
            run_id
            for run_id, record in self._records.items()
            if record.finished_at is not None and record.finished_at <= cutoff
        ]
        for run_id in stale:
            del self._records[run_id]
        return len(stale)

    def alive(self) -> list[ExecutionRecord]:
        """Records of all runs that are not yet terminal."""
        return [r for r in self._records.values() if r.state.is_alive]

    def __len__(self) -> int:
        return len(self._records)
