"""A chaos client of the wire protocol: users with several runs in flight, dropped at random.

Each ``ChaosUser`` keeps ``inflight`` runs going on one WebSocket, and drops that
socket at random moments — right after sending a message, right after an ack,
or at any frame — by aborting the TCP connection or closing it cleanly. It then
reconnects, resends every message whose ack it has not seen (same
``client_id``), and resumes every unfinished run from the last ``seq`` it saw.

It assembles each run's events as a careful client would and counts every way
the server could break exactly-once delivery:

- ``duplicated``: an event whose ``seq`` the user had already seen;
- ``gaps``: an event past the next expected ``seq`` (one was skipped);
- ``early``: an event of a run that this socket had neither acknowledged nor been
  asked to resume (the ack must come first);
- ``lost`` and ``stuck`` are found afterwards by ``verify`` against the server's
  log: events the log has and the client never got, and runs not ended.

Used by ``tests/e2e/test_chaos.py`` (bounded) and ``bench/chaos.py`` (long runs).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import websockets

TERMINAL = frozenset({"agent_completed", "agent_error", "agent_cancelled"})
ENDED_STATES = frozenset({"completed", "failed", "timeout", "dead", "cancelled"})


class DroppedError(Exception):
    """The chaos client dropped its own socket."""


@dataclass
class Counters:
    """What the chaos clients saw (summed over users)."""

    runs: int = 0
    events: int = 0
    disconnects: int = 0
    aborts: int = 0
    resends: int = 0
    resumes: int = 0
    duplicated: int = 0
    gaps: int = 0
    early: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, other: Counters) -> None:
        """Add ``other``'s counts to these."""
        for name in ("runs", "events", "disconnects", "aborts", "resends", "resumes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.duplicated += other.duplicated
        self.gaps += other.gaps
        self.early += other.early
        for code, count in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + count


@dataclass
class RunSeen:
    """One run as the client assembled it."""

    run_id: str
    seqs: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    ended: bool = False


class ChaosUser:
    """One user's chaotic session (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        messages: int,
        inflight: int,
        drop: float,
        rng: random.Random,
        agent: str = "assistant",
        deadline: float = 300.0,
        retry_delay: float = 0.0,
    ) -> None:
        self.ws_url = base_url.replace("http", "ws", 1) + "/api/v1/ws"
        self.token = token
        self.messages = messages
        self.inflight = inflight
        self.drop = drop
        self.rng = rng
        self.agent = agent
        self.deadline = deadline
        self.retry_delay = retry_delay
        """Seconds between a failed connection and the next (a server that is down)."""
        self.sent = 0
        self.unacked: dict[str, bytes] = {}  # client_id -> frame
        self.run_of: dict[str, str] = {}  # client_id -> run_id
        self.runs: dict[str, RunSeen] = {}
        self.counters = Counters()

    def _open_runs(self) -> int:
        return len(self.unacked) + sum(1 for r in self.runs.values() if not r.ended)

    def _done(self) -> bool:
        return self.sent >= self.messages and not self.unacked and self._open_runs() == 0

    async def run(self) -> Counters:
        """Send every message and follow every run to its end, through the chaos."""
        async with asyncio.timeout(self.deadline):
            while not self._done():
                try:
                    await self._session()
                except DroppedError:
                    continue  # dropped on purpose: reconnect at once
                except (websockets.ConnectionClosed, websockets.InvalidHandshake, OSError):
                    await asyncio.sleep(self.retry_delay)  # the server went away (or is starting)
                except TimeoutError:  # no answer from a server being killed or restarted
                    await asyncio.sleep(self.retry_delay)
        self.counters.runs = len(self.runs)
        return self.counters

    async def _maybe_drop(self, ws: websockets.ClientConnection, moment: str) -> None:
        if self.rng.random() >= self.drop:
            return
        self.counters.disconnects += 1
        if self.rng.random() < 0.5:
            self.counters.aborts += 1
            transport = ws.transport
            transport.abort()
        else:
            await ws.close()
        raise DroppedError(moment)

    async def _session(self) -> None:
        async with websockets.connect(self.ws_url, open_timeout=10, close_timeout=1) as ws:
            await ws.send(orjson.dumps({"type": "auth", "token": self.token}).decode())
            established = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            if established.get("type") != "connection_established":
                raise DroppedError(f"no connection_established: {established}")
            followed: set[str] = set()  # runs acknowledged on, or resumed over, this socket
            for frame in list(self.unacked.values()):  # acks lost with an earlier socket
                self.counters.resends += 1
                await ws.send(frame.decode())
                await self._maybe_drop(ws, "after resend")
            for run in [r for r in self.runs.values() if not r.ended]:
                self.counters.resumes += 1
                followed.add(run.run_id)
                after = run.seqs[-1] if run.seqs else 0
                resume = {"type": "resume", "run_id": run.run_id, "after": after}
                await ws.send(orjson.dumps(resume).decode())
            while not self._done():
                while self.sent < self.messages and self._open_runs() < self.inflight:
                    await self._send_new(ws)
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                await self._handle(ws, frame, followed)

    async def _send_new(self, ws: websockets.ClientConnection) -> None:
        client_id = uuid.uuid4().hex
        self.sent += 1
        frame = orjson.dumps(
            {"type": "message", "content": f"What is {self.sent}*7?", "agent": self.agent,
             "client_id": client_id}
        )  # fmt: skip
        self.unacked[client_id] = frame
        await ws.send(frame.decode())
        await self._maybe_drop(ws, "after send")

    async def _handle(
        self, ws: websockets.ClientConnection, frame: dict[str, Any], followed: set[str]
    ) -> None:
        kind = frame.get("type")
        if kind == "ack":
            client_id, run_id = frame.get("client_id"), frame["run_id"]
            if client_id in self.unacked:
                del self.unacked[client_id]
                self.run_of[client_id] = run_id
            self.runs.setdefault(run_id, RunSeen(run_id))
            followed.add(run_id)
            await self._maybe_drop(ws, "after ack")
            return
        if kind == "error":
            code = str(frame.get("code"))
            self.counters.errors[code] = self.counters.errors.get(code, 0) + 1
            ref = frame.get("ref")
            if ref in self.unacked:  # refused: it will not run; count it and send no more of it
                del self.unacked[ref]
            return
        if "seq" not in frame:
            return
        run_id = frame["run_id"]
        if run_id not in followed:
            self.counters.early += 1
        run = self.runs.setdefault(run_id, RunSeen(run_id))
        last = run.seqs[-1] if run.seqs else 0
        seq = frame["seq"]
        if seq <= last:
            self.counters.duplicated += 1
            return
        if seq > last + 1:
            self.counters.gaps += 1
        run.seqs.append(seq)
        run.types.append(frame["type"])
        self.counters.events += 1
        if frame["type"] in TERMINAL and frame.get("parent_agent") is None:
            run.ended = True
        if self.rng.random() < self.drop / 4:
            await self._maybe_drop(ws, "mid-run")


@dataclass
class Verdict:
    """What the server's log says about the client's runs."""

    runs: int = 0
    lost: int = 0
    stuck: int = 0
    mismatched: int = 0
    extra_runs: int = 0


async def verify(base_url: str, user: ChaosUser) -> Verdict:
    """Compare the user's assembled runs with the server's log and states."""
    verdict = Verdict()
    headers = {"authorization": f"Bearer {user.token}"}
    api = f"{base_url}/api/v1"
    async with httpx.AsyncClient(base_url=api, headers=headers, timeout=30) as http:
        stored: list[str] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = (await http.get("/threads", params=params)).json()
            for thread in page["items"]:
                messages = (await http.get(f"/threads/{thread['id']}/messages")).json()["items"]
                stored += [m["run_id"] for m in messages if m["role"] == "user"]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        verdict.runs = len(stored)
        verdict.extra_runs = len(set(stored) - set(user.runs))
        for run_id in stored:
            state = (await http.get(f"/runs/{run_id}")).json()["state"]
            if state not in ENDED_STATES:
                verdict.stuck += 1
            logged = (await http.get(f"/runs/{run_id}/events")).json()["items"]
            seen = user.runs.get(run_id)
            got = seen.seqs if seen else []
            verdict.lost += len({e["seq"] for e in logged} - set(got))
            if seen is not None and [e["seq"] for e in logged] != got:
                verdict.mismatched += 1
    return verdict
