"""Golden Path load: N users x M messages over WebSockets against `atoll serve`.

Starts `atoll serve` (offline model, fresh SQLite data dir, message rate limit
raised for the load) and the bare FastAPI echo server as separate processes on
loopback, registers N users, then each user sends M messages one after another
on its own WebSocket and waits for each run's terminal event. Users register
through ``atoll.client``; the load itself uses bare ``websockets`` + orjson so that
the client costs as little as possible and is the same for both servers. The same client
load then runs against the echo server, the ceiling of the stack.

Prints JSON: runs/s, p50/p99 from send to agent_completed, p50/p99 time to the
first event, failures, server peak RSS, and the ratio to the echo ceiling.

    python bench/golden_path.py --users 100 --messages 20 [--agent assistant] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets

from atoll.client import AtollClient

from report import ONE_ADDRESS, percentile, start_profile, stop_profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from ports import free_port

HERE = Path(__file__).resolve().parent
QUESTION = "What is 17*23?"


def wait_ready(url: str, process: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + path, timeout=1).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError("server did not start")


@contextlib.contextmanager
def process(
    command: list[str], env: dict[str, str], url: str, path: str, *, log: Path | None = None
) -> Iterator[int]:
    """Run ``command`` until the block ends, once ``url + path`` answers; yields its pid."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(command, env=env, stdout=out, stderr=out)
    try:
        wait_ready(url, proc, path)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not None:
            out.close()  # type: ignore[union-attr]


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a live process: its peak resident set size."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def user_load(
    ws_url: str, token: str, messages: int, agent: str, results: dict[str, list[float]]
) -> None:
    async with websockets.connect(ws_url, compression=None, max_size=2**22) as ws:
        await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
        await ws.recv()
        for index in range(messages):
            sent = time.perf_counter()
            first: float | None = None
            await ws.send(orjson.dumps(
                {"type": "message", "content": QUESTION, "agent": agent, "client_id": f"c{index}"}
            ).decode())  # fmt: skip
            while True:
                frame = orjson.loads(await ws.recv())
                kind = frame.get("type")
                if kind == "error":
                    results["failures"].append(1)
                    break
                if "seq" in frame and first is None:
                    first = time.perf_counter()
                if kind in ("agent_completed", "agent_error", "agent_cancelled") and (
                    frame.get("parent_agent") is None
                ):
                    done = time.perf_counter()
                    if kind != "agent_completed":
                        results["failures"].append(1)
                    results["latency"].append((done - sent) * 1000)
                    results["first"].append(((first or done) - sent) * 1000)
                    break


async def drive(
    ws_url: str | list[str], tokens: list[str], messages: int, agent: str
) -> dict[str, Any]:
    """Every user's load at once; user ``i`` connects to ``ws_url[i % len(ws_url)]``."""
    urls = [ws_url] if isinstance(ws_url, str) else ws_url
    results: dict[str, list[float]] = {"latency": [], "first": [], "failures": []}
    started = time.perf_counter()
    await asyncio.gather(
        *(user_load(urls[i % len(urls)], t, messages, agent, results) for i, t in enumerate(tokens))
    )
    elapsed = time.perf_counter() - started
    runs = len(results["latency"])
    return {
        "runs": runs,
        "failures": len(results["failures"]),
        "seconds": round(elapsed, 3),
        "runs_per_s": round(runs / elapsed, 1),
        "latency_ms_p50": percentile(results["latency"], 0.5),
        "latency_ms_p99": percentile(results["latency"], 0.99),
        "first_event_ms_p50": percentile(results["first"], 0.5),
        "first_event_ms_p99": percentile(results["first"], 0.99),
    }


async def register_users(url: str, users: int) -> list[str]:
    """Register the users through the Python client; returns their access tokens."""
    semaphore = asyncio.Semaphore(8)

    async def one(index: int) -> str:
        async with semaphore, AtollClient(url) as client:
            await client.register(f"bench{index}@example.com", "bench-password")
            assert client.access_token is not None
            return client.access_token

    return await asyncio.gather(*(one(i) for i in range(users)))


def run(users: int, messages: int, agent: str, profile: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="atoll-bench-") as data:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "ATOLL_MESSAGES_PER_MINUTE": "1000000",
            "ATOLL_SIGNUPS_PER_HOUR": "1000000",
            **ONE_ADDRESS,
            "ATOLL_DATA_DIR": data,
        }
        command = [sys.executable, "-m", "atoll.cli", "serve", "--port", str(port)]
        with process(command, env, url, "/readyz") as pid:
            tokens = asyncio.run(register_users(url, users))
            profiler = start_profile(pid, profile)
            try:
                ws_url = f"ws://127.0.0.1:{port}/api/v1/ws"
                atoll = asyncio.run(drive(ws_url, tokens, messages, agent))
            finally:
                stop_profile(profiler)
            atoll["server_peak_rss_mib"] = peak_rss_mib(pid)
        frames = 14 if agent == "supervisor" else 10
        echo_port = free_port()
        echo_command = [sys.executable, str(HERE / "echo_server.py"), "--port", str(echo_port),
                        "--frames", str(frames)]  # fmt: skip
        with process(echo_command, dict(os.environ), f"http://127.0.0.1:{echo_port}", "/docs"):
            echo = asyncio.run(
                drive(f"ws://127.0.0.1:{echo_port}/api/v1/ws", ["x"] * users, messages, agent)
            )
    return {
        "users": users,
        "messages_per_user": messages,
        "agent": agent,
        "atoll": atoll,
        "echo_ceiling": echo,
        "ratio_to_echo": round(atoll["runs_per_s"] / max(echo["runs_per_s"], 0.001), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--agent", default="supervisor", choices=["assistant", "supervisor"])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--profile", type=Path, help="py-spy the server during the load")
    args = parser.parse_args()
    output = run(args.users, args.messages, args.agent, args.profile)
    print(json.dumps(output, indent=2))
    if args.write:
        from report import write_section

        command = "python " + " ".join(["bench/golden_path.py", *sys.argv[1:]])
        write_section(f"golden-path-{args.agent}", command, output)


if __name__ == "__main__":
    main()
