"""``CpuMeter``: the CPU a run's steps take on the event loop's thread, waiting excluded."""

from __future__ import annotations

import asyncio
import time

import pytest

from atoll.aio import CpuMeter

pytestmark = pytest.mark.unit


def burn(seconds: float) -> None:
    """Keep this thread busy for ``seconds`` of its own CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def work(busy: float, waits: float) -> str:
    burn(busy)
    await asyncio.sleep(waits)
    burn(busy)
    return "done"


async def test_a_meter_counts_the_cpu_of_each_step_and_not_the_waiting() -> None:
    meter = CpuMeter()
    assert await meter.meter(work(0.03, 0.3)) == "done"
    assert 0.06 <= meter.seconds < 0.06 + 0.2  # the 0.3 s of waiting is not CPU


async def test_two_awaitables_of_one_run_add_up_and_other_tasks_do_not_count() -> None:
    meter = CpuMeter()
    other = asyncio.create_task(work(0.05, 0.01))  # someone else's, interleaved
    await asyncio.gather(meter.meter(work(0.02, 0.01)), meter.meter(work(0.02, 0.01)), other)
    assert 0.08 <= meter.seconds < 0.08 + 0.1 - 0.001


async def test_cancellation_and_errors_pass_through_a_metered_task() -> None:
    meter = CpuMeter()
    task = asyncio.create_task(meter.meter(work(0.0, 30)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await meter.meter(fails())
