"""Engine throughput: N users x M runs through ExecutionEngineFactory with the offline model.

Each user keeps up to the per-user limit of runs in flight; every run is a full
run (fresh engine, agent, dispatcher, emitter; events logged and published).
Prints JSON: runs/s, events/s, p50/p99 run latency, peak RSS.

    python bench/engine.py --users 100 --runs 100 [--agent assistant] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import time
from typing import Any

from atoll.bus.memory import InMemoryEventBus, InMemoryRunEventLog
from atoll.runtime.builtins import builtin_registry
from atoll.runtime.context import UserExecutionContext
from atoll.runtime.engine import RunRequest
from atoll.runtime.events import EventRecorder
from atoll.runtime.factory import ExecutionEngineFactory
from atoll.runtime.ids import new_id
from atoll.runtime.limits import RuntimeLimits
from atoll.runtime.llm.offline import OfflineProvider
from atoll.runtime.state import ExecutionState
from atoll.runtime.tools.knowledge import KnowledgeBase

from report import percentile

QUESTION = "What is 17*23?"


async def bench(
    users: int, runs: int, agent: str, max_seconds: float, freeze: bool = False
) -> dict[str, Any]:
    # Runs take well under a millisecond: a short retention keeps memory at steady state,
    # as the 24 h retention does for a database-backed log.
    log, bus = InMemoryRunEventLog(retention=2.0), InMemoryEventBus()
    limits = RuntimeLimits()
    factory = ExecutionEngineFactory(
        registry=builtin_registry(),
        llm=OfflineProvider(),
        recorder=EventRecorder(log, bus),
        limits=limits,
        resources={KnowledgeBase: KnowledgeBase()},
    )
    latencies: list[float] = []
    states: dict[str, int] = {}
    events = 0
    deadline = time.perf_counter() + max_seconds

    async def user_worker(user_id: str, thread_id: str, quota: list[int]) -> None:
        nonlocal events
        while quota[0] > 0 and time.perf_counter() < deadline:
            quota[0] -= 1
            context = UserExecutionContext(
                user_id=user_id, thread_id=thread_id, run_id=new_id("run"),
                request_id=new_id("req"),
            )  # fmt: skip
            started = time.perf_counter()
            outcome = await factory.run(context, RunRequest(agent, QUESTION, new_id("msg")))
            latencies.append((time.perf_counter() - started) * 1000)
            states[outcome.state.value] = states.get(outcome.state.value, 0) + 1
            events += len(await log.read(context.run_id, user_id=user_id))

    async def prune() -> None:
        while True:
            await asyncio.sleep(1.0)
            log.prune()

    pruner = asyncio.create_task(prune())
    async with factory:
        # Warm up (imports, the knowledge index, code paths) outside the measurement.
        warm = [1]
        await user_worker(new_id("usr"), new_id("thr"), warm)
        latencies.clear()
        states.clear()
        events = 0
        gc.collect()
        if freeze:
            gc.freeze()  # what `atoll serve` can do after start-up: see docs/benchmarks.md
        started = time.perf_counter()
        workers = []
        for _ in range(users):
            user_id, thread_id, quota = new_id("usr"), new_id("thr"), [runs]
            workers += [
                user_worker(user_id, thread_id, quota) for _ in range(limits.max_concurrent_runs)
            ]
        await asyncio.gather(*workers)
        elapsed = time.perf_counter() - started
    pruner.cancel()
    done = len(latencies)
    return {
        "users": users,
        "runs_per_user": runs,
        "agent": agent,
        "gc_freeze": freeze,
        "runs": done,
        "completed": states.get(ExecutionState.COMPLETED.value, 0),
        "states": states,
        "seconds": round(elapsed, 3),
        "runs_per_s": round(done / elapsed, 1),
        "events_per_s": round(events / elapsed, 1),
        "events_per_run": round(events / max(done, 1), 1),
        "latency_ms_p50": percentile(latencies, 0.5),
        "latency_ms_p99": percentile(latencies, 0.99),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--runs", type=int, default=100, help="runs per user")
    parser.add_argument("--agent", default="assistant", choices=["assistant", "supervisor"])
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop starting runs")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after warm-up")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    result = bench(args.users, args.runs, args.agent, args.max_seconds, args.gc_freeze)
    output = asyncio.run(result)
    print(json.dumps(output, indent=2))
    if args.write:
        from report import write_section

        command = "python " + " ".join(["bench/engine.py", *sys.argv[1:]])
        write_section(f"engine-{args.agent}", command, output)


if __name__ == "__main__":
    main()
