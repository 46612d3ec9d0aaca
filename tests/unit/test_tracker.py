"""AgentExecutionTracker: records, heartbeats, DEAD and TIMEOUT detection, stats, cleanup."""

from __future__ import annotations

import asyncio

import pytest

from atoll.errors import IllegalTransitionError, RunNotFoundError
from atoll.runtime.state import ExecutionState as S
from atoll.runtime.tracker import AgentExecutionTracker, ExecutionRecord

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracker_with_clock(**kwargs: float) -> tuple[AgentExecutionTracker, FakeClock]:
    clock = FakeClock()
    params = {"heartbeat_timeout": 30.0, "run_timeout": 300.0, **kwargs}
    return AgentExecutionTracker(clock=clock, **params), clock


def start(tracker: AgentExecutionTracker, run_id: str = "run_a", user: str = "usr_a") -> None:
    tracker.register(run_id=run_id, user_id=user, thread_id="thr_a", agent="assistant")
    tracker.transition(run_id, S.STARTING)
    tracker.transition(run_id, S.RUNNING)


def test_records_every_transition_with_time() -> None:
    tracker, _ = tracker_with_clock()
    start(tracker)
    tracker.transition("run_a", S.COMPLETING)
    record = tracker.transition("run_a", S.COMPLETED)
    assert [s for s, _ in record.transitions] == [
        S.PENDING, S.STARTING, S.RUNNING, S.COMPLETING, S.COMPLETED,
    ]  # fmt: skip
    times = [t for _, t in record.transitions]
    assert times == sorted(times)
    assert record.finished_at is not None
    assert not record.is_alive


def test_illegal_and_untyped_transitions_rejected() -> None:
    tracker, _ = tracker_with_clock()
    tracker.register(run_id="run_a", user_id="usr_a", thread_id="thr_a", agent="assistant")
    with pytest.raises(IllegalTransitionError):
        tracker.transition("run_a", S.COMPLETED)
    with pytest.raises(TypeError):
        tracker.transition("run_a", {"state": "running"})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tracker.transition("run_a", "running")  # type: ignore[arg-type]
    assert tracker.get("run_a").state is S.PENDING
    with pytest.raises(RunNotFoundError):
        tracker.transition("run_missing", S.STARTING)
    with pytest.raises(ValueError, match="already tracked"):
        tracker.register(run_id="run_a", user_id="usr_a", thread_id="thr_a", agent="x")


def test_stale_heartbeat_marks_dead() -> None:
    tracker, clock = tracker_with_clock(heartbeat_timeout=30)
    start(tracker)
    clock.now += 29
    assert tracker.check() == []
    tracker.heartbeat("run_a")
    clock.now += 29
    assert tracker.check() == []
    clock.now += 2
    expired = tracker.check()
    assert [r.run_id for r in expired] == ["run_a"]
    record = tracker.get("run_a")
    assert record.state is S.DEAD
    assert record.error is not None
    assert record.error["code"] == "run_dead"


def test_completing_run_can_go_dead_but_not_timeout() -> None:
    tracker, clock = tracker_with_clock(heartbeat_timeout=30, run_timeout=10)
    start(tracker)
    tracker.transition("run_a", S.COMPLETING)
    clock.now += 20
    tracker.heartbeat("run_a")
    assert tracker.check() == []
    clock.now += 31
    assert tracker.check()[0].state is S.DEAD


def test_overdue_run_marked_timeout() -> None:
    tracker, clock = tracker_with_clock(heartbeat_timeout=30, run_timeout=60)
    start(tracker)
    for _ in range(6):
        clock.now += 10
        tracker.heartbeat("run_a")
        assert tracker.check() == []
    clock.now += 1
    tracker.heartbeat("run_a")
    expired = tracker.check()
    assert [r.state for r in expired] == [S.TIMEOUT]
    assert tracker.get("run_a").error["code"] == "run_timeout"  # type: ignore[index]


def test_pending_runs_are_not_expired() -> None:
    tracker, clock = tracker_with_clock(heartbeat_timeout=1, run_timeout=1)
    tracker.register(run_id="run_p", user_id="usr_a", thread_id="thr_a", agent="assistant")
    clock.now += 100
    assert tracker.check() == []
    assert tracker.get("run_p").state is S.PENDING


def test_listeners_told_of_expiry_and_can_be_removed() -> None:
    tracker, clock = tracker_with_clock(heartbeat_timeout=5)
    seen: list[tuple[str, S]] = []

    def listener(record: ExecutionRecord) -> None:
        seen.append((record.run_id, record.state))

    def broken(record: ExecutionRecord) -> None:
        raise RuntimeError("listener bug")

    tracker.add_listener(broken)
    remove = tracker.add_listener(listener)
    start(tracker, "run_1")
    clock.now += 6
    tracker.check()
    assert seen == [("run_1", S.DEAD)]
    remove()
    start(tracker, "run_2")
    clock.now += 6
    tracker.check()
    assert seen == [("run_1", S.DEAD)]


def test_counts_success_rate_and_cleanup() -> None:
    tracker, clock = tracker_with_clock()
    assert tracker.success_rate() is None
    for index, final in enumerate([S.COMPLETED, S.COMPLETED, S.COMPLETED, S.FAILED]):
        run_id = f"run_{index}"
        start(tracker, run_id)
        if final is S.COMPLETED:
            tracker.transition(run_id, S.COMPLETING)
        tracker.transition(run_id, final)
    start(tracker, "run_alive")
    counts = tracker.counts()
    assert set(counts) == set(S)
    assert counts[S.COMPLETED] == 3
    assert counts[S.FAILED] == 1
    assert counts[S.RUNNING] == 1
    assert tracker.success_rate() == 0.75
    clock.now += 100
    assert tracker.cleanup(older_than=50) == 4
    assert len(tracker) == 1
    assert tracker.success_rate() == 0.75
    assert tracker.finished_totals()[S.COMPLETED] == 3
    assert [r.run_id for r in tracker.alive()] == ["run_alive"]


async def test_monitor_task_detects_dead_and_pulse_keeps_live_runs_alive() -> None:
    tracker = AgentExecutionTracker(heartbeat_timeout=0.2, run_timeout=60)
    start(tracker, "run_kept")
    start(tracker, "run_lost")
    expired = asyncio.Event()
    tracker.add_listener(lambda record: expired.set())
    async with tracker.monitoring(0.02, pulse=lambda: ["run_kept"]):
        await asyncio.wait_for(expired.wait(), timeout=5)
    assert tracker.get("run_lost").state is S.DEAD
    assert tracker.get("run_kept").state is S.RUNNING


async def test_monitor_task_detects_timeout() -> None:
    tracker = AgentExecutionTracker(heartbeat_timeout=30, run_timeout=0.1)
    start(tracker)
    expired = asyncio.Event()
    tracker.add_listener(lambda record: expired.set())
    async with tracker.monitoring(0.02, pulse=lambda: ["run_a"]):
        await asyncio.wait_for(expired.wait(), timeout=5)
    assert tracker.get("run_a").state is S.TIMEOUT


async def test_finished_records_do_not_outlive_the_retention_by_more_than_a_tenth() -> None:
    """Cleanup runs every tenth of the retention: a record finished just after one
    cleanup is gone at 1.1 x the retention, not kept until the cleanup after next
    (which made the tracker hold twice the retention's worth of runs)."""
    tracker, clock = tracker_with_clock(heartbeat_timeout=10_000, run_timeout=10_000)
    ticked = asyncio.Event()

    def pulse() -> list[str]:
        ticked.set()
        return []

    async def two_ticks() -> None:  # the monitor has looked at the new time
        for _ in range(2):
            ticked.clear()
            await asyncio.wait_for(ticked.wait(), 5)

    async with tracker.monitoring(0.001, pulse=pulse, retention=10.0):
        start(tracker)
        clock.now += 1
        tracker.transition("run_a", S.COMPLETING)
        tracker.transition("run_a", S.COMPLETED)
        clock.now += 9  # a cleanup 10 s after the start: the record is 9 s old, kept
        await two_ticks()
        assert len(tracker) == 1
        clock.now += 1.5  # 10.5 s old: the next cleanup (a tenth later) forgets it
        await two_ticks()
        assert len(tracker) == 0
    assert tracker.finished_totals()[S.COMPLETED] == 1


def test_invalid_timeouts_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        AgentExecutionTracker(heartbeat_timeout=0)


def test_limits_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from atoll.config import Settings
    from atoll.runtime.limits import RuntimeLimits

    monkeypatch.setenv("ATOLL_MAX_CONCURRENT_RUNS", "5")
    monkeypatch.setenv("ATOLL_RUN_OVERFLOW", "reject")
    monkeypatch.setenv("ATOLL_HEARTBEAT_TIMEOUT", "1.5")
    limits = RuntimeLimits.from_settings(Settings())
    assert limits.max_concurrent_runs == 5
    assert limits.overflow == "reject"
    assert limits.heartbeat_timeout == 1.5
    assert limits.monitor_interval == 0.5
    assert limits.run_timeout == 300.0
    monkeypatch.setenv("ATOLL_RUN_OVERFLOW", "explode")
    with pytest.raises(ValueError, match="run_overflow"):
        Settings()
