"""Live streams: N users, one stream each, all asking at once, at a real model's speed.

Starts `atoll serve` (offline model with ``ATOLL_OFFLINE_TOKEN_DELAY`` between
deltas, fresh SQLite data dir) on loopback and registers N users. A question
whose answer is 50 ``message_delta``s is first asked by one user alone (the
uncontended run time), then by every user at once:

- ``ws``: one WebSocket per user (connected and authenticated beforehand);
- ``sse``: HTTP, one request per run (``POST /chat`` with
  ``Accept: text/event-stream``), or two with ``--sse-requests 2``
  (``POST /chat``, then ``GET /runs/{id}/stream``).

Reports per door: run time p50/p99 (send to terminal event) and the slowdown
against the lone run, first event p50/p99, the gap between consecutive delta
events of a run p50/p99, delta events/s and answer chunks/s (the model's 50
chunks per completed run: Atoll coalesces chunks into fewer delta events under
load, so chunks/s is the throughput to compare), failures, server CPU (cores
used during the phase) and RSS, and the client's own CPU (it shares the 2 cores).

``--peer`` runs the same load against ``langgraph dev`` (a graph whose node
streams 50 custom events at the same delay), from the venv named by
``--peer-venv`` (created with ``pip install "langgraph-cli[inmem]"`` if
missing), and reports the ratios in the same run.

    python bench/streaming.py --users 1000 [--doors ws,sse] [--peer] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets

from golden_path import process, register_users
from report import ONE_ADDRESS, percentile, start_profile, stop_profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from ports import free_port

HERE = Path(__file__).resolve().parent
QUESTION = "How do I scale Atoll out with workers and Redis?"
"""Its offline answer (agent ``assistant``) is 50 deltas after one knowledge search."""
AGENT = "assistant"
DELTAS = 50
TERMINAL = (b"agent_completed", b"agent_error", b"agent_cancelled")
PHASE_TIMEOUT = 300.0
"""No phase waits longer than this for its runs (bounded load)."""


Runs = list[list["Trace"]]
"""Per user, the traces of its runs (asked one after another)."""


@dataclass
class Trace:
    """What one client saw of one run."""

    sent: float = 0.0
    first: float | None = None
    deltas: list[float] = field(default_factory=list)
    done: float | None = None
    failed: str | None = None


def summarise(traces: list[Trace], started: float, ended: float, lone: float) -> dict[str, Any]:
    """The figures of one phase."""
    ok = [t for t in traces if t.failed is None and t.done is not None]
    runs = [(t.done - t.sent) * 1000 for t in ok if t.done is not None]
    firsts = [((t.first or t.sent) - t.sent) * 1000 for t in ok]
    gaps = [
        (later - earlier) * 1000
        for t in ok
        for earlier, later in zip(t.deltas, t.deltas[1:], strict=False)
    ]
    deltas = sum(len(t.deltas) for t in traces)
    failures: dict[str, int] = {}
    for t in traces:
        if t.failed is not None:
            failures[t.failed] = failures.get(t.failed, 0) + 1
    p50 = percentile(runs, 0.5)
    return {
        "runs": len(runs),
        "failures": failures,
        "deltas_per_run": round(deltas / max(len(traces), 1), 1),
        "run_ms_p50": p50,
        "run_ms_p99": percentile(runs, 0.99),
        "slowdown_p50": round(p50 / lone, 2) if lone else None,
        "first_event_ms_p50": percentile(firsts, 0.5),
        "first_event_ms_p99": percentile(firsts, 0.99),
        "delta_gap_ms_p50": percentile(gaps, 0.5),
        "delta_gap_ms_p99": percentile(gaps, 0.99),
        "delta_events_per_s": round(deltas / max(ended - started, 1e-9), 1),
        "chunks_per_s": round(len(runs) * DELTAS / max(ended - started, 1e-9), 1),
        "seconds": round(ended - started, 3),
    }


class Usage:
    """CPU seconds of a process (server: /proc; client: getrusage) and its memory."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._start = self._cpu()
        self._wall = time.perf_counter()

    def _cpu(self) -> float:
        if self.pid is None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return usage.ru_utime + usage.ru_stime
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cores(self) -> float:
        """Cores used on average since construction."""
        return round((self._cpu() - self._start) / (time.perf_counter() - self._wall), 2)


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of ``pid``."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "VmHWM"):
            values[key] = round(int(line.split()[1]) / 1024, 1)
    return {"rss_mib": values.get("VmRSS", 0.0), "peak_rss_mib": values.get("VmHWM", 0.0)}


# -- Atoll over WebSockets -------------------------------------------------------------


async def ws_phase(port: int, tokens: list[str], go: asyncio.Event, traces: Runs) -> None:
    """Connect every user, then (on ``go``) each asks its questions one after another."""
    url = f"ws://127.0.0.1:{port}/api/v1/ws"
    connecting = asyncio.Semaphore(50)
    ready = asyncio.Semaphore(0)

    async def one(ws: Any, trace: Trace) -> None:
        trace.sent = time.perf_counter()
        message = {"type": "message", "content": QUESTION, "agent": AGENT}
        await ws.send(orjson.dumps(message).decode())
        while True:
            raw = await ws.recv(decode=False)
            now = time.perf_counter()
            if trace.first is None and b'"seq"' in raw:
                trace.first = now
            if b'"type":"message_delta"' in raw:
                trace.deltas.append(now)
                continue
            if b'"type":"error"' in raw[:20]:
                trace.failed = orjson.loads(raw).get("code", "error")
                return
            if any(t in raw[:40] for t in TERMINAL) and b'"parent_agent":null' in raw:
                trace.done = now
                if not raw.startswith(b'{"type":"agent_completed"'):
                    trace.failed = "run_failed"
                return

    async def user(token: str, runs: list[Trace]) -> None:
        async with connecting:
            ws = await websockets.connect(url, compression=None, max_size=2**22, open_timeout=60)
            await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
            await ws.recv()
        ready.release()
        try:
            await go.wait()
            for trace in runs:
                await one(ws, trace)
        finally:
            await ws.close()

    tasks = [asyncio.create_task(user(t, runs)) for t, runs in zip(tokens, traces, strict=True)]
    for _ in tokens:
        await ready.acquire()
    await asyncio.sleep(0.5)  # let the server settle after the connection burst
    go.set()
    await asyncio.wait_for(asyncio.gather(*tasks), PHASE_TIMEOUT)


# -- Atoll over SSE --------------------------------------------------------------------


def sse_events(buffer: bytearray) -> list[bytes]:
    """Complete SSE messages at the front of ``buffer`` (removed from it)."""
    out = []
    while True:
        end = buffer.find(b"\n\n")
        if end < 0:
            return out
        out.append(bytes(buffer[:end]))
        del buffer[: end + 2]


async def read_sse(response: httpx.Response, trace: Trace, *, end: Callable[[bytes], bool]) -> None:
    """Read SSE messages until ``end(message)``; deltas and the first event are traced."""
    buffer = bytearray()
    async for chunk in response.aiter_raw():
        now = time.perf_counter()
        buffer += chunk
        for message in sse_events(buffer):
            if message.startswith(b":") or message.startswith(b"retry"):
                continue
            if trace.first is None:
                trace.first = now
            if b"message_delta" in message[:40]:
                trace.deltas.append(now)
            elif end(message):
                trace.done = now
                return
    trace.failed = "stream_ended_early"


def atoll_terminal(message: bytes) -> bool:
    head = message[:60]
    return any(t in head for t in TERMINAL) and b'"parent_agent":null' in message


async def sse_phase(
    port: int, tokens: list[str], go: asyncio.Event, traces: Runs, requests: int
) -> None:
    """Each user asks its questions over HTTP, reading each run's SSE stream to its end."""
    base = f"http://127.0.0.1:{port}/api/v1"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(PHASE_TIMEOUT, connect=60)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def one(auth: dict[str, str], trace: Trace) -> None:
            body = {"message": QUESTION, "agent": AGENT}
            trace.sent = time.perf_counter()
            if requests == 1:
                headers = {**auth, "Accept": "text/event-stream"}
                async with client.stream("POST", f"{base}/chat", json=body, headers=headers) as r:
                    if r.status_code != 200:
                        await r.aread()
                        trace.failed = f"http_{r.status_code}"
                        return
                    await read_sse(r, trace, end=atoll_terminal)
                return
            accepted = await client.post(f"{base}/chat", json=body, headers=auth)
            if accepted.status_code != 202:
                trace.failed = f"http_{accepted.status_code}"
                return
            run_id = accepted.json()["run"]["id"]
            async with client.stream("GET", f"{base}/runs/{run_id}/stream", headers=auth) as r:
                if r.status_code != 200:
                    await r.aread()
                    trace.failed = f"http_{r.status_code}"
                    return
                await read_sse(r, trace, end=atoll_terminal)

        async def user(token: str, runs: list[Trace]) -> None:
            await go.wait()
            for trace in runs:
                await one({"Authorization": f"Bearer {token}"}, trace)

        tasks = [asyncio.create_task(user(t, x)) for t, x in zip(tokens, traces, strict=True)]
        await asyncio.sleep(0.5)
        go.set()
        await asyncio.wait_for(asyncio.gather(*tasks), PHASE_TIMEOUT)


# -- langgraph dev -----------------------------------------------------------------------

PEER_GRAPH = """
import asyncio, os
from typing import TypedDict
from langgraph.config import get_stream_writer
from langgraph.graph import StateGraph, START, END

DELAY = float(os.environ.get("PEER_TOKEN_DELAY", "0.033"))
DELTAS = int(os.environ.get("PEER_DELTAS", "50"))

class State(TypedDict):
    question: str
    answer: str

async def answer(state: State) -> dict:
    write = get_stream_writer()
    parts = []
    for index in range(DELTAS):
        await asyncio.sleep(DELAY)
        piece = f"word{index} "
        parts.append(piece)
        write({"delta": piece})
    return {"answer": "".join(parts)}

builder = StateGraph(State)
builder.add_node("answer", answer)
builder.add_edge(START, "answer")
builder.add_edge("answer", END)
graph = builder.compile()
"""


def peer_venv(path: Path) -> Path:
    """The venv with ``langgraph dev``; created on first use."""
    binary = path / "bin" / "langgraph"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        pip = [str(path / "bin" / "pip"), "install", "-q", "langgraph-cli[inmem]"]
        subprocess.run(pip, check=True)
    return binary


async def peer_phase(port: int, go: asyncio.Event, traces: Runs) -> None:
    """Each user creates a thread, then streams its runs of the graph (custom events)."""
    base = f"http://127.0.0.1:{port}"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(PHASE_TIMEOUT, connect=60)
    created = asyncio.Semaphore(0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def one(thread: str, trace: Trace) -> None:
            trace.sent = time.perf_counter()
            body = {"assistant_id": "stream", "input": {"question": QUESTION},
                    "stream_mode": ["custom"]}  # fmt: skip
            url = f"{base}/threads/{thread}/runs/stream"
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    trace.failed = f"http_{response.status_code}"
                    return
                buffer = bytearray()
                async for chunk in response.aiter_raw():
                    now = time.perf_counter()
                    buffer += chunk.replace(b"\r", b"")  # it ends lines with CRLF
                    for message in sse_events(buffer):
                        if message.startswith(b"event: custom"):
                            trace.first = trace.first or now
                            trace.deltas.append(now)
                        elif message.startswith(b"event: error"):
                            trace.failed = "run_failed"
                trace.done = time.perf_counter()

        async def user(runs: list[Trace]) -> None:
            thread = (await client.post(f"{base}/threads", json={})).json()["thread_id"]
            created.release()
            await go.wait()
            for trace in runs:
                await one(thread, trace)

        tasks = [asyncio.create_task(user(runs)) for runs in traces]
        for _ in traces:
            await created.acquire()
        go.set()
        await asyncio.wait_for(asyncio.gather(*tasks), PHASE_TIMEOUT)


# -- running it ---------------------------------------------------------------------------


async def measured(
    pid: int,
    phase: Callable[[asyncio.Event, Runs], Awaitable[None]],
    n: int,
    lone: float,
    profile: Path | None = None,
    *,
    runs_per_user: int = 1,
) -> dict[str, Any]:
    traces = [[Trace() for _ in range(runs_per_user)] for _ in range(n)]
    go = asyncio.Event()
    server: Usage | None = None
    client: Usage | None = None
    profiler: subprocess.Popen[bytes] | None = None

    async def start_clock() -> None:
        nonlocal server, client, profiler
        await go.wait()
        server, client = Usage(pid), Usage(None)
        profiler = start_profile(pid, profile)

    clock = asyncio.create_task(start_clock())
    started = 0.0
    try:
        runner = asyncio.create_task(phase(go, traces))
        await go.wait()
        started = time.perf_counter()
        await runner
    finally:
        clock.cancel()
        stop_profile(profiler)
    flat = [trace for runs in traces for trace in runs]
    ended = max((t.done or 0.0) for t in flat) or time.perf_counter()
    result = summarise(flat, started, ended, lone)
    if server is None or client is None:
        raise RuntimeError("the phase never started")
    result["server_cpu_cores"] = server.cores()
    result["client_cpu_cores"] = client.cores()
    result.update({f"server_{k}": v for k, v in memory_mib(pid).items()})
    return result


async def lone_run(phase: Callable[[asyncio.Event, Runs], Awaitable[None]]) -> float:
    """The median of three uncontended runs, ms."""
    times = []
    for _ in range(3):
        traces = [[Trace()]]
        await phase(asyncio.Event(), traces)
        trace = traces[0][0]
        if trace.done is None or trace.failed:
            raise RuntimeError(f"the lone run failed: {trace.failed}")
        times.append((trace.done - trace.sent) * 1000)
    return sorted(times)[1]


def run_atoll(
    users: int,
    doors: list[str],
    delay: float,
    sse_requests: int,
    profile: Path | None,
    runs_per_user: int,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="atoll-bench-") as data:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "ATOLL_MESSAGES_PER_MINUTE": "1000000",
            "ATOLL_SIGNUPS_PER_HOUR": "1000000",
            **ONE_ADDRESS,
            "ATOLL_OFFLINE_TOKEN_DELAY": str(delay),
            "ATOLL_MAX_SSE_STREAMS": "100",
            "ATOLL_DATA_DIR": data,
        }
        command = [sys.executable, "-m", "atoll.cli", "serve", "--port", str(port)]
        results: dict[str, Any] = {}
        with process(command, env, url, "/readyz") as pid:
            tokens = asyncio.run(register_users(url, users + 1))
            lone_token, tokens = tokens[0], tokens[1:]
            for door in doors:

                def phase(
                    go: asyncio.Event, traces: Runs, *, lone: bool = False, door: str = door
                ) -> Awaitable[None]:
                    chosen = [lone_token] if lone else tokens
                    if door == "ws":
                        return ws_phase(port, chosen, go, traces)
                    return sse_phase(port, chosen, go, traces, sse_requests)

                lone = asyncio.run(lone_run(lambda go, t, phase=phase: phase(go, t, lone=True)))
                output = profile.with_name(f"{profile.name}-{door}.txt") if profile else None
                result = asyncio.run(
                    measured(pid, phase, users, lone, output, runs_per_user=runs_per_user)
                )
                results[door] = {"lone_run_ms": round(lone, 1), **result}
        return results


def run_peer(users: int, delay: float, venv: Path, runs_per_user: int) -> dict[str, Any]:
    binary = peer_venv(venv)
    with tempfile.TemporaryDirectory(prefix="atoll-peer-") as work:
        Path(work, "graph.py").write_text(PEER_GRAPH)
        config = {"dependencies": ["."], "graphs": {"stream": "./graph.py:graph"}}
        Path(work, "langgraph.json").write_text(json.dumps(config))
        port = free_port()
        env = {**os.environ, "PEER_TOKEN_DELAY": str(delay), "PEER_DELTAS": str(DELTAS),
               "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false"}  # fmt: skip
        env.pop("VIRTUAL_ENV", None)
        command = [str(binary), "dev", "--no-browser", "--no-reload", "--port", str(port),
                   "--host", "127.0.0.1", "--n-jobs-per-worker", str(max(users, 10))]  # fmt: skip
        log = Path(work, "peer.log")
        with contextlib.chdir(work), process(command, env, f"http://127.0.0.1:{port}", "/ok",
                                             log=log) as pid:  # fmt: skip
            lone = asyncio.run(lone_run(lambda go, t: peer_phase(port, go, t)))
            phase = partial(peer_phase, port)
            result = asyncio.run(measured(pid, phase, users, lone, runs_per_user=runs_per_user))
        return {"lone_run_ms": round(lone, 1), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--doors", default="ws,sse", help="comma-separated: ws, sse")
    parser.add_argument("--token-delay", type=float, default=0.033)
    parser.add_argument("--runs-per-user", type=int, default=1, help="asked one after another")
    parser.add_argument("--sse-requests", type=int, default=1, choices=[1, 2])
    parser.add_argument("--peer", action="store_true", help="also run langgraph dev")
    parser.add_argument("--peer-venv", type=Path, default=HERE / ".peer-venv")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the server during each phase into PROFILE-<door>.txt"
    )
    args = parser.parse_args()
    doors = [d.strip() for d in args.doors.split(",") if d.strip()]
    atoll = run_atoll(
        args.users, doors, args.token_delay, args.sse_requests, args.profile, args.runs_per_user
    )
    output: dict[str, Any] = {
        "users": args.users,
        "runs_per_user": args.runs_per_user,
        "token_delay_s": args.token_delay,
        "nominal_run_ms": round(DELTAS * args.token_delay * 1000, 1),
        "sse_requests_per_run": args.sse_requests,
        "atoll": atoll,
    }
    if "ws" in atoll and "sse" in atoll:
        output["sse_to_ws_run_p50"] = round(
            atoll["sse"]["run_ms_p50"] / max(atoll["ws"]["run_ms_p50"], 1e-9), 2
        )
    if args.peer:
        peer = run_peer(args.users, args.token_delay, args.peer_venv, args.runs_per_user)
        output["langgraph_dev"] = peer
        for door, result in atoll.items():
            output[f"{door}_chunks_per_s_to_langgraph"] = round(
                result["chunks_per_s"] / max(peer["chunks_per_s"], 1e-9), 2
            )
            output[f"{door}_run_p50_to_langgraph"] = round(
                result["run_ms_p50"] / max(peer["run_ms_p50"], 1e-9), 2
            )
    print(json.dumps(output, indent=2))
    if args.write:
        from report import write_section

        command = "python " + " ".join(["bench/streaming.py", *sys.argv[1:]])
        name = f"streaming-{args.users}" + (
            f"x{args.runs_per_user}" if args.runs_per_user > 1 else ""
        )
        write_section(name + ("-delay0" if not args.token_delay else ""), command, output)


if __name__ == "__main__":
    main()
