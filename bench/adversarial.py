"""The big adversarial run against `atoll serve`: what a hostile user does, at volume.

Starts `atoll serve` (fresh SQLite data dir, the test plugin ``cpu_tools`` for a
plain-def CPU bomb, message and sign-up limits raised so the load reaches the
server) and runs, one after another:

1. a login burst: N concurrent wrong passwords for one email, the right one in the middle;
2. CPU bombs: user A keeps 3 runs of the worst calculator inputs the limits allow (and a
   refused power, and the killable plain-def spinner) going while user B measures
   ``GET /me`` and the time to the first event of its own runs; the same without A first;
3. schemathesis with every check against the live OpenAPI document;
4. a WebSocket frame fuzzer: random and mutated frames over many sockets;
5. resource isolation, on a server with the default limits: calculator bombs as a model
   passes them on (``round`` with huge digits, products, powers), one user posting
   32,000-character messages at the allowed rate, one posting "hello" at the allowed
   rate — each beside a bystander measuring ``GET /me`` and its first event, against a
   same-run baseline (``--only-isolation`` runs this part alone).

Prints JSON and, with ``--write``, records it in docs/reliability.md.

    python bench/adversarial.py [--http-examples 500] [--frames 100000] [--burst 1000]
        [--bomb-seconds 20] [--isolation-seconds 20] [--only-isolation] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets

from report import ONE_ADDRESS, RELIABILITY, percentile, write_section

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "scripts"))
from conformance import run_schemathesis  # noqa: E402
from golden_path import process  # noqa: E402
from ports import free_port  # noqa: E402

PASSWORD = "correct horse battery"
# The costliest expression the calculator accepts: 49 powers just under the result limit.
WORST_ALLOWED = "9**4505%7+" * 49 + "1"
REFUSED = "(9**4000)**5000"


async def register(http: httpx.AsyncClient, email: str) -> str:
    answer = await http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    answer.raise_for_status()
    return str(answer.json()["access_token"])


async def login_burst(url: str, size: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=size + 10, max_keepalive_connections=size + 10)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await register(http, "victim@example.com")
        wrong = {"email": "victim@example.com", "password": "not the password"}
        right = {"email": "victim@example.com", "password": PASSWORD}
        calls = [http.post("/api/v1/auth/login", json=wrong) for _ in range(size)]
        calls.insert(size // 2, http.post("/api/v1/auth/login", json=right))
        started = time.perf_counter()
        answers = await asyncio.gather(*calls, return_exceptions=True)
        elapsed = time.perf_counter() - started
    statuses = [a.status_code if isinstance(a, httpx.Response) else 0 for a in answers]
    return {
        "attempts": len(calls),
        "401": statuses.count(401),
        "429": statuses.count(429),
        "other": len(statuses) - statuses.count(401) - statuses.count(429),
        "right_password_inside_burst": statuses[size // 2],
        "seconds": round(elapsed, 2),
    }


async def first_event_ms(ws: websockets.ClientConnection, question: str) -> float:
    """Send ``question``; milliseconds until its run's first event (then drain the run)."""
    sent = time.perf_counter()
    frame = {"type": "message", "content": question, "agent": "assistant"}
    await ws.send(orjson.dumps(frame).decode())
    first: float | None = None
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame.get("type") == "error":
            raise RuntimeError(f"the observer's message was refused: {frame}")
        if "seq" in frame and first is None:
            first = (time.perf_counter() - sent) * 1000
        if frame.get("type") in ("agent_completed", "agent_error") and not frame["parent_agent"]:
            return first or 0.0


async def observer(
    url: str, token: str, seconds: float, *, run_every: float = 0.5
) -> dict[str, Any]:
    """User B: ``GET /me`` every 10 ms and a run every ``run_every`` seconds, for ``seconds``."""
    me: list[float] = []
    first: list[float] = []
    headers = {"authorization": f"Bearer {token}"}
    deadline = time.monotonic() + seconds

    async def poll_me() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                (await http.get("/api/v1/me")).raise_for_status()
                me.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.01)

    async def runs() -> None:
        async with websockets.connect(url.replace("http", "ws") + "/api/v1/ws") as ws:
            await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
            await ws.recv()
            while time.monotonic() < deadline:
                first.append(await first_event_ms(ws, "What is 2+2?"))
                await asyncio.sleep(run_every)

    await asyncio.gather(poll_me(), runs())
    return {
        "me_requests": len(me),
        "me_p50_ms": percentile(me, 0.5),
        "me_p99_ms": percentile(me, 0.99),
        "me_max_ms": round(max(me), 3) if me else 0.0,
        "runs": len(first),
        "first_event_p50_ms": percentile(first, 0.5),
        "first_event_p99_ms": percentile(first, 0.99),
    }


async def bomber(url: str, token: str, stop: asyncio.Event, tally: dict[str, int]) -> None:
    """User A: three runs at a time, each the worst calculator input (or a bomb)."""
    bombs = [f"What is {WORST_ALLOWED}?", f"What is {REFUSED}?"]

    async def lane(index: int) -> None:
        async with websockets.connect(url.replace("http", "ws") + "/api/v1/ws") as ws:
            await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
            await ws.recv()
            while not stop.is_set():
                if index == 2:  # the plain-def spinner: a core busy until its timeout kills it
                    frame = {"type": "message", "content": "30", "agent": "spinner"}
                else:
                    frame = {"type": "message", "content": bombs[index], "agent": "assistant"}
                await ws.send(orjson.dumps(frame).decode())
                while True:
                    reply = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
                    if reply.get("type") == "tool_completed":
                        tally["tool_calls"] += 1
                    if reply.get("type") == "error":
                        tally["refused"] += 1
                        break
                    if reply.get("type") in ("agent_completed", "agent_error") and (
                        not reply["parent_agent"]
                    ):
                        tally["runs"] += 1
                        break

    await asyncio.gather(*(lane(i) for i in range(3)))


async def cpu_bombs(url: str, seconds: float) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        attacker = await register(http, "bomber@example.com")
        other = await register(http, "bystander@example.com")
    baseline = await observer(url, other, seconds / 2)
    stop = asyncio.Event()
    tally = {"runs": 0, "tool_calls": 0, "refused": 0}
    attack = asyncio.create_task(bomber(url, attacker, stop, tally))
    await asyncio.sleep(1.0)  # the bombs are going
    during = await observer(url, other, seconds)
    stop.set()
    await asyncio.wait_for(attack, 60)
    return {"worst_allowed_input": WORST_ALLOWED, "attacker": tally, "baseline": baseline,
            "during_bombs": during}  # fmt: skip


def random_frame(rng: random.Random, run_ids: list[str]) -> str | bytes:
    """One frame from the fuzzer's mix: mutated protocol frames, wild JSON, junk."""
    pick = rng.random()
    if pick < 0.05:
        return rng.randbytes(rng.randint(0, 200))
    if pick < 0.12:
        return "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 120)))
    wild: list[Any] = [None, True, -1, 0, 2**63, -(2**70), 1.5, float("inf"), "", "x" * 300, [],
                       {}, {"a": [1, {"b": None}]}, "\u202e", "run_" + "A" * 22]  # fmt: skip
    kind = rng.choice(["message", "cancel", "resume", "ping", "auth", "", None, 7, "resume"])
    frame: dict[str, Any] = {"type": kind}
    for key in ("content", "run_id", "thread_id", "after", "client_id", "multitask", "agent"):
        if rng.random() < 0.45:
            frame[key] = rng.choice(wild + run_ids)
    if kind == "message" and rng.random() < 0.03:
        frame = {"type": "message", "content": "What is 1+1?", "agent": "assistant"}
    try:
        return json.dumps(frame, allow_nan=True)
    except ValueError:
        return json.dumps({"type": kind})


def is_ping(frame: str | bytes) -> bool:
    """Whether the server answers ``frame`` with a pong (a JSON object of type ping)."""
    if isinstance(frame, bytes):
        return False
    try:
        value = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and value.get("type") == "ping"


async def fuzz_frames(url: str, total: int, sockets: int, seed: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        tokens = [await register(http, f"fuzz{n}@example.com") for n in range(sockets // 5 + 1)]
        chat = await http.post(
            "/api/v1/chat",
            json={"message": "What is 3*3?"},
            headers={"authorization": f"Bearer {tokens[0]}"},
        )
        run_ids = [chat.json()["run"]["id"]]
    counts: dict[str, int] = {"sent": 0, "pongs": 0, "errors": 0, "events": 0, "acks": 0}
    codes: dict[str, int] = {}
    closes: dict[str, int] = {}

    async def one(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        token = tokens[index % len(tokens)]
        share = total // sockets
        while share > 0:
            try:
                async with websockets.connect(
                    url.replace("http", "ws") + "/api/v1/ws", max_size=2**24
                ) as ws:
                    await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
                    await ws.recv()
                    while share > 0:
                        batch = [random_frame(rng, run_ids) for _ in range(min(share, 50))]
                        for frame in batch:
                            await ws.send(frame)
                        await ws.send('{"type": "ping"}')
                        share -= len(batch)
                        counts["sent"] += len(batch)
                        await read_replies(ws, 1 + sum(map(is_ping, batch)))
            except websockets.ConnectionClosed as closed:
                code = str(closed.rcvd.code if closed.rcvd else "none")
                closes[code] = closes.get(code, 0) + 1

    async def read_replies(ws: websockets.ClientConnection, pongs: int) -> None:
        while pongs:
            reply = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
            kind = reply.get("type")
            if kind == "pong":
                counts["pongs"] += 1
                pongs -= 1
            elif kind == "error":
                counts["errors"] += 1
                codes[reply["code"]] = codes.get(reply["code"], 0) + 1
            elif kind == "ack":
                counts["acks"] += 1
            else:
                counts["events"] += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(sockets)))
    elapsed = round(time.perf_counter() - started, 1)
    return {**counts, "error_codes": codes, "closes": closes,
            "closed_1011": closes.get("1011", 0), "seconds": elapsed}  # fmt: skip


CALCULATOR_BOMBS = [
    "round(9, -10**7)",  # round computes 10**N inside (78 s on the event loop before)
    "round(9**4500, -10**9)",
    "9**4500 * 9**4500 * 9**4500",
    "(2**9999 // 3) * (2**9999 // 7) * 2**9999",
]
FLOOD_TEXT = "(" * 32_000


async def flooder(
    url: str, token: str, text: str, stop: asyncio.Event, tally: dict[str, int]
) -> None:
    """One user sending ``text`` as fast as the server accepts (the allowed rate: a refused
    message waits its ``retry_after``), runs left to finish on their own."""
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        while not stop.is_set():
            answer = await http.post("/api/v1/chat", json={"message": text})
            if answer.status_code == 429:
                tally["refused"] += 1
                wait = float(answer.json().get("retry_after") or 1.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(wait, 5.0))
                continue
            answer.raise_for_status()
            tally["accepted"] += 1


async def bombs_by_message(
    url: str, token: str, stop: asyncio.Event, tally: dict[str, int]
) -> None:
    """Calculator bombs the way a model passes them on: the user asks, the model calls."""
    async with websockets.connect(url.replace("http", "ws") + "/api/v1/ws") as ws:
        await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
        await ws.recv()
        index = 0
        while not stop.is_set():
            question = f"What is {CALCULATOR_BOMBS[index % len(CALCULATOR_BOMBS)]}?"
            index += 1
            frame = {"type": "message", "content": question, "agent": "assistant"}
            await ws.send(orjson.dumps(frame).decode())
            while True:
                reply = orjson.loads(await asyncio.wait_for(ws.recv(), 120))
                if reply.get("type") == "tool_completed":
                    tally["tool_errors" if not reply["data"]["ok"] else "tool_answers"] += 1
                if reply.get("type") == "error":
                    tally["refused"] += 1
                    await asyncio.sleep(1.0)
                    break
                if reply.get("type") in ("agent_completed", "agent_error") and (
                    not reply["parent_agent"]
                ):
                    tally["runs"] += 1
                    break


async def isolation(url: str, seconds: float) -> dict[str, Any]:
    """Each attack of issue 23 beside a bystander, with a same-run baseline first."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        bystander = await register(http, "isolation-bystander@example.com")
        attackers = [await register(http, f"isolation-{n}@example.com") for n in range(3)]
    # The bystander keeps to the default 60 messages a minute too.
    watch = partial(observer, url, bystander, run_every=1.2)
    result: dict[str, Any] = {"baseline": await watch(seconds / 2)}
    attacks = {
        "calculator_bombs": partial(bombs_by_message, url, attackers[0]),
        "flood_32kb_at_allowed_rate": partial(flooder, url, attackers[1], FLOOD_TEXT),
        "hello_at_allowed_rate": partial(flooder, url, attackers[2], "hello"),
    }
    for name, attack in attacks.items():
        stop = asyncio.Event()
        tally: dict[str, int] = collections.Counter()
        task = asyncio.create_task(attack(stop, tally))
        await asyncio.sleep(1.0)  # the attack is going
        during = await watch(seconds)
        stop.set()
        await asyncio.wait_for(task, 180)
        result[name] = {"attacker": dict(tally), "bystander": during}
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await until_idle(http)
    return result


ALIVE_STATES = ("pending", "starting", "running", "completing")


async def until_idle(http: httpx.AsyncClient) -> None:
    """Wait (up to 180 s) until the server's metrics show no run alive, between attacks."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = (await http.get("/metrics")).text
        alive = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("atoll_runs{") and any(f'"{s}"' in line for s in ALIVE_STATES)
        )
        if alive == 0:
            return
        await asyncio.sleep(0.5)


def log_problems(log: Path) -> dict[str, int]:
    text = log.read_text(errors="replace")
    return {
        "tracebacks": text.count("Traceback"),
        "asgi_exceptions": text.count("Exception in ASGI application"),
        "http_5xx": sum(1 for line in text.splitlines() if '" 5' in line and "HTTP/1.1" in line),
    }


async def isolation_main(args: argparse.Namespace) -> dict[str, Any]:
    """The isolation attacks alone, on a server with the default limits (the allowed rate
    is the default 60 messages a minute)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = Path(tempfile.mkdtemp(prefix="atoll-isolation-"))
    log = data / "serve.log"
    env = {
        **os.environ,
        "ATOLL_DATA_DIR": str(data / "data"),
        "ATOLL_SIGNUPS_PER_HOUR": "1000",
        **ONE_ADDRESS,
    }
    command = [sys.executable, "-m", "atoll.cli", "serve", "--port", str(port)]
    with process(command, env, url, "/readyz", log=log):
        result = await isolation(url, args.isolation_seconds)
    result["server_log"] = log_problems(log)
    return result


async def main(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = Path(tempfile.mkdtemp(prefix="atoll-adversarial-"))
    log = data / "serve.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "plugins"), os.environ.get("PYTHONPATH", "")]),  # noqa: E501
        "ATOLL_DATA_DIR": str(data / "data"),
        "ATOLL_PLUGINS": "cpu_tools",
        "ATOLL_MESSAGES_PER_MINUTE": "1000000",
        "ATOLL_SIGNUPS_PER_HOUR": "1000000", **ONE_ADDRESS,
        "ATOLL_TOOL_CALLS_PER_MINUTE": "1000000",
    }  # fmt: skip
    command = [sys.executable, "-m", "atoll.cli", "serve", "--port", str(port)]
    result: dict[str, Any] = {}
    with process(command, env, url, "/readyz", log=log):
        result["login_burst"] = await login_burst(url, args.burst)
        result["cpu_bombs"] = await cpu_bombs(url, args.bomb_seconds)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            token = await register(http, "schemathesis@example.com")
        conformance = await asyncio.to_thread(
            run_schemathesis,
            url,
            token,
            examples=args.http_examples,
            seed=args.seed,
            workers=1,  # CPython 3.11.7's ast.parse can fail in threads (schemathesis uses it)
            timeout=7200,
        )
        result["schemathesis"] = {
            "cases": conformance.generated,
            "passed": conformance.passed,
            "failures": conformance.failures,
            "exit_code": conformance.returncode,
        }
        if not conformance.ok:
            print(conformance.output[-4000:], file=sys.stderr)
        result["ws_fuzz"] = await fuzz_frames(url, args.frames, args.sockets, args.seed)
    result["server_log"] = log_problems(log)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http-examples", type=int, default=500)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--sockets", type=int, default=20)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--bomb-seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--isolation-seconds", type=float, default=20.0)
    parser.add_argument(
        "--only-isolation",
        action="store_true",
        help="only the resource-isolation attacks (calculator bombs, 32 KB and hello floods)",
    )
    parser.add_argument("--write", action="store_true")
    arguments = parser.parse_args()
    if arguments.only_isolation:
        outcome = asyncio.run(isolation_main(arguments))
        section = "isolation"
    else:
        outcome = asyncio.run(main(arguments))
        outcome["isolation"] = asyncio.run(isolation_main(arguments))
        section = "adversarial"
    print(json.dumps(outcome, indent=2))
    if arguments.write:
        write_section(section, "python " + " ".join(sys.argv), outcome, doc=RELIABILITY)
