"""The long chaos runs against `atoll serve`: exactly once, crash recovery, memory, shutdown.

Each part starts its own `atoll serve` (fresh SQLite data dir, offline model):

1. ``disconnects``: users with 5 runs in flight each, sockets aborted or closed at
   random (after sends, after acks, mid-run) until at least ``--disconnects`` drops;
   every run is then checked against the server's log (scripts/chaos_client.py).
2. ``kill9``: the same load while the server is killed with SIGKILL and restarted
   ``--kills`` times; every acknowledged message must have its run, every run must end
   (those alive at a crash: ``dead``), every client's runs must equal the log.
3. ``soak``: ``--soak-runs`` runs (or ``--soak-seconds``) over WebSockets, the server's RSS
   sampled throughout; growth is reported from the 10 % to the 100 % mark.
4. ``sigterm``: long runs followed over SSE and WebSockets, then SIGTERM: the time to exit
   against the grace, how each SSE stream ended, and whether anything was logged as a crash.

    python bench/chaos.py [--users 40] [--disconnects 10000] [--kills 5]
        [--soak-runs 100000] [--soak-seconds 3600] [--parts disconnects,kill9,soak,sigterm]
        [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
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

from report import ONE_ADDRESS, RELIABILITY, write_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from chaos_client import ChaosUser, Counters, Verdict, verify  # noqa: E402
from ports import free_port  # noqa: E402

PASSWORD = "correct horse battery"


class Server:
    """An ``atoll serve`` child process on a free port, restartable on the same data dir."""

    def __init__(self, data: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = data
        self.log = data / "serve.log"
        self.env = {**os.environ, "ATOLL_DATA_DIR": str(data / "data"),
                    "ATOLL_MESSAGES_PER_MINUTE": "1000000", "ATOLL_SIGNUPS_PER_HOUR": "1000000",
                    **ONE_ADDRESS, **env}  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "atoll.cli", "serve", "--port", str(self.port)]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(command, env=self.env, stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("atoll serve did not become ready")

    def rss_mib(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def signal(self, sig: int) -> float:
        """Send ``sig`` and wait for the exit; the seconds it took."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(sig)
        self.process.wait(timeout=120)
        self.process = None
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is not None:
            self.signal(signal.SIGTERM)


@contextlib.contextmanager
def server(**env: str) -> Iterator[Server]:
    running = Server(Path(tempfile.mkdtemp(prefix="atoll-chaos-")), **env)
    running.start()
    try:
        yield running
    finally:
        if running.process is not None:
            running.process.kill()
            running.process.wait()


async def tokens(url: str, count: int, prefix: str) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        found = []
        for n in range(count):
            body = {"email": f"{prefix}{n}@example.com", "password": PASSWORD}
            answer = await http.post("/api/v1/auth/register", json=body)
            found.append(answer.json()["access_token"])
        return found


async def settle(url: str, users: list[ChaosUser]) -> dict[str, int]:
    verdict = Verdict()
    for user in users:
        one = await verify(url, user)
        for name in ("runs", "lost", "stuck", "mismatched", "extra_runs"):
            setattr(verdict, name, getattr(verdict, name) + getattr(one, name))
    return vars(verdict)


def totals(results: list[Counters]) -> dict[str, Any]:
    summed = Counters()
    for counters in results:
        summed.add(counters)
    return vars(summed)


async def disconnects(args: argparse.Namespace) -> dict[str, Any]:
    with server(ATOLL_OFFLINE_TOKEN_DELAY="0.002") as running:
        keys = await tokens(running.url, args.users, "chaos")
        per_user = max(10, args.disconnects // args.users)  # about one drop per message
        started = time.monotonic()
        users = [
            ChaosUser(
                running.url,
                token,
                messages=per_user,
                inflight=5,
                drop=0.3,
                rng=random.Random(n),
                deadline=3600,
            )
            for n, token in enumerate(keys)
        ]
        counts = totals(list(await asyncio.gather(*(u.run() for u in users))))
        elapsed = time.monotonic() - started
        verdict = await settle(running.url, users)
    return {"users": args.users, "messages": per_user * args.users, "inflight_per_user": 5,
            "seconds": round(elapsed, 1), "client": counts, "log": verdict}  # fmt: skip


async def kill9(args: argparse.Namespace) -> dict[str, Any]:
    with server(ATOLL_OFFLINE_TOKEN_DELAY="0.01") as running:
        keys = await tokens(running.url, 20, "crash")
        users = [
            ChaosUser(
                running.url,
                token,
                messages=60,
                inflight=5,
                drop=0.05,
                rng=random.Random(1000 + n),
                deadline=3600,
                retry_delay=0.2,
            )
            for n, token in enumerate(keys)
        ]
        load = asyncio.gather(*(u.run() for u in users))
        for _ in range(args.kills):
            await asyncio.sleep(3.0)  # the load is in full swing
            assert running.process is not None
            running.process.kill()  # SIGKILL: nothing is flushed, nothing is said
            running.process.wait()
            running.process = None
            await asyncio.to_thread(running.start)
        counts = totals(list(await load))
        verdict = await settle(running.url, users)
        states = await run_states(running.url, keys)
    return {"kills": args.kills, "client": counts, "log": verdict, "states": states}


async def run_states(url: str, keys: list[str]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for token in keys:
        headers = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=headers) as http:
            threads = (await http.get("/threads", params={"limit": 100})).json()["items"]
            for thread in threads:
                for message in (await http.get(f"/threads/{thread['id']}/messages")).json()[
                    "items"
                ]:
                    if message["role"] == "user":
                        state = (await http.get(f"/runs/{message['run_id']}")).json()["state"]
                        counted[state] = counted.get(state, 0) + 1
    return counted


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    with server() as running:
        keys = await tokens(running.url, args.users, "soak")
        done = 0
        samples: list[tuple[int, float, float]] = []
        started = time.monotonic()
        stop = asyncio.Event()

        async def user(token: str) -> None:
            nonlocal done
            async with websockets.connect(running.url.replace("http", "ws") + "/api/v1/ws") as ws:
                await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
                await ws.recv()
                while not stop.is_set():
                    frame = {"type": "message", "content": "What is 17*23?", "agent": "assistant"}
                    await ws.send(orjson.dumps(frame).decode())
                    while True:
                        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
                        if reply.get("type") == "error":
                            raise RuntimeError(f"refused: {reply}")
                        if reply.get("type") in ("agent_completed", "agent_error") and (
                            reply.get("parent_agent") is None
                        ):
                            done += 1
                            break
                    if done >= args.soak_runs or time.monotonic() - started > args.soak_seconds:
                        stop.set()

        async def sample() -> None:
            while not stop.is_set():
                samples.append((done, round(time.monotonic() - started, 1), running.rss_mib()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)
            samples.append((done, round(time.monotonic() - started, 1), running.rss_mib()))

        await asyncio.gather(sample(), *(user(t) for t in keys))
    total = samples[-1][0]
    at_10 = next(rss for runs, _, rss in samples if runs >= total * 0.1)
    at_100 = samples[-1][2]
    return {
        "runs": total,
        "seconds": samples[-1][1],
        "runs_per_second": round(total / max(samples[-1][1], 0.001), 1),
        "rss_mib_at_10pct": round(at_10, 1),
        "rss_mib_at_100pct": round(at_100, 1),
        "rss_growth_10_to_100_pct": round((at_100 - at_10) / at_10 * 100, 2),
        "rss_mib_peak": round(max(rss for _, _, rss in samples), 1),
        "samples": [list(s) for s in samples[:: max(1, len(samples) // 20)]],
    }


async def sse_ending(
    http: httpx.AsyncClient, token: str, run_id: str, opened: asyncio.Queue[str]
) -> str:
    """Follow a run over SSE until the server ends the stream; how it ended."""
    headers = {"authorization": f"Bearer {token}"}
    last = "none"
    try:
        async with http.stream("GET", f"/api/v1/runs/{run_id}/stream", headers=headers) as answer:
            opened.put_nowait(run_id)
            if answer.status_code != 200:
                return f"status {answer.status_code}"
            async for line in answer.aiter_lines():
                if line.startswith("event: "):
                    last = line.removeprefix("event: ")
                elif line.startswith("retry:"):
                    last = "retry hint"
    except httpx.HTTPError:
        opened.put_nowait(run_id)
        last = "cut"
    return last


async def sigterm(args: argparse.Namespace) -> dict[str, Any]:
    grace = 5.0
    with server(ATOLL_SHUTDOWN_GRACE=str(grace), ATOLL_OFFLINE_TOKEN_DELAY="1.0") as running:
        keys = await tokens(running.url, 20, "term")
        runs: list[tuple[str, str]] = []
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=running.url, timeout=60, limits=limits) as http:
            for token in keys:  # three long runs per user (the concurrency limit)
                headers = {"authorization": f"Bearer {token}"}
                for _ in range(3):
                    body = {"message": "hello", "agent": "assistant"}
                    accepted = (await http.post("/api/v1/chat", json=body, headers=headers)).json()
                    runs.append((token, accepted["run"]["id"]))
            opened: asyncio.Queue[str] = asyncio.Queue()
            streams = [asyncio.create_task(sse_ending(http, t, r, opened)) for t, r in runs]
            async with asyncio.timeout(60):  # every stream has its answer head before the signal
                for _ in runs:
                    await opened.get()
            elapsed = await asyncio.to_thread(running.signal, signal.SIGTERM)
            endings: dict[str, int] = {}
            for ending in await asyncio.gather(*streams):
                endings[ending] = endings.get(ending, 0) + 1
        log = running.log.read_text(errors="replace")
    return {"grace_seconds": grace, "exit_seconds": round(elapsed, 2), "sse_streams": len(runs),
            "sse_endings": endings, "tracebacks": log.count("Traceback"),
            "asgi_exceptions": log.count("Exception in ASGI application")}  # fmt: skip


async def main(args: argparse.Namespace) -> dict[str, Any]:
    parts = {"disconnects": disconnects, "kill9": kill9, "soak": soak, "sigterm": sigterm}
    result: dict[str, Any] = {}
    for name in args.parts.split(","):
        print(f"== {name}", file=sys.stderr)
        result[name] = await parts[name](args)
        print(json.dumps(result[name]), file=sys.stderr)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--disconnects", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--soak-runs", type=int, default=100_000)
    parser.add_argument("--soak-seconds", type=float, default=3600.0)
    parser.add_argument("--parts", default="disconnects,kill9,soak,sigterm")
    parser.add_argument("--write", action="store_true")
    arguments = parser.parse_args()
    outcome = asyncio.run(main(arguments))
    print(json.dumps(outcome, indent=2))
    if arguments.write:  # one section per part, so parts can be re-run alone
        for part, figures in outcome.items():
            command = "python " + " ".join(sys.argv)
            write_section(f"chaos-{part}", command, figures, doc=RELIABILITY)
