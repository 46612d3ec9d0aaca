"""Run events: the envelope, the log and bus interfaces, and the per-run emitter.

An event is built and serialised once (orjson), appended to the run's event log,
and only then published on the bus; the same bytes go to every socket. ``seq``
is assigned by the run's emitter under a lock, so it starts at 1 and has no
gaps, and the bus sees a run's events in ``seq`` order.

Answer text is *coalesced*: an agent's ``delta`` queues its text and returns; one
flusher per run logs and publishes what is queued as one ``message_delta``. On an
idle server that is every delta as it comes (the flusher runs on the next loop
turn); while the run's previous event is still being logged, the text that
arrives meanwhile becomes one event. So under load a run sends fewer, larger
deltas instead of falling behind, the text is the same (the stored answer is the
concatenation of the deltas), and a run's other events never overtake its text.

The log and bus are interfaces (``RunEventLog``, ``RunEventBus``): the in-process
implementations live in ``atoll.bus.memory``; the database-backed log and the
Redis bus (``atoll.bus.redis``) plug in without any change here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import orjson

from atoll.aio import CpuMeter
from atoll.errors import RunClosedError

logger = logging.getLogger(__name__)


class EventType(StrEnum):
    """The run event types of the wire protocol."""

    AGENT_STARTED = "agent_started"
    AGENT_THINKING = "agent_thinking"
    TOOL_EXECUTING = "tool_executing"
    TOOL_COMPLETED = "tool_completed"
    MESSAGE_DELTA = "message_delta"
    AGENT_COMPLETED = "agent_completed"
    AGENT_ERROR = "agent_error"
    AGENT_CANCELLED = "agent_cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for the three types that can end a run."""
        return self in _TERMINAL_TYPES


_TERMINAL_TYPES = frozenset(
    {EventType.AGENT_COMPLETED, EventType.AGENT_ERROR, EventType.AGENT_CANCELLED}
)
_FAILED_ENDINGS = frozenset({EventType.AGENT_ERROR, EventType.AGENT_CANCELLED})


def utc_timestamp() -> str:
    """Now as RFC 3339 UTC with milliseconds (``2026-11-22T03:14:15.926Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Timestamper:
    """Formats "now" like ``utc_timestamp`` at a fraction of the cost.

    Events are stamped tens of thousands of times a second; the date-and-seconds
    prefix is formatted once per second and only the milliseconds are added.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        """The current time as RFC 3339 UTC with milliseconds."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


MAX_QUEUED_DELTA = 16_384
"""Characters of answer text a run may have queued; past it ``delta`` waits for the flusher."""


PREVIEW_CHARS = 1_000
"""The longest string an event carries of a tool's arguments or result, or a sub-agent's task."""
PREVIEW_ITEMS = 100
"""The most items of a list or object an event carries of them."""


def preview(value: Any, *, depth: int = 0) -> Any:
    """``value`` as an event shows it: strings over ``PREVIEW_CHARS`` cut, at most
    ``PREVIEW_ITEMS`` items per list or object, 8 levels. Events are a view of what a tool
    or agent was given and gave back — the tool and the model get the whole value — so a
    32 KB message passed to a tool is not copied into the log twice more."""
    if isinstance(value, str):
        if len(value) <= PREVIEW_CHARS:
            return value
        return f"{value[:PREVIEW_CHARS]}… ({len(value) - PREVIEW_CHARS} more characters)"
    if depth >= 8 and isinstance(value, Mapping | list | tuple):
        return "…"
    if isinstance(value, Mapping):
        items = list(value.items())
        shown = {str(k): preview(v, depth=depth + 1) for k, v in items[:PREVIEW_ITEMS]}
        if len(items) > PREVIEW_ITEMS:
            shown["…"] = f"{len(items) - PREVIEW_ITEMS} more"
        return shown
    if isinstance(value, list | tuple):
        shown_items = [preview(v, depth=depth + 1) for v in value[:PREVIEW_ITEMS]]
        if len(value) > PREVIEW_ITEMS:
            shown_items.append(f"… {len(value) - PREVIEW_ITEMS} more")
        return shown_items
    return value


def _compact(payload: bytes) -> bytes:
    return bytes(memoryview(payload))


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One event of one run, with its wire bytes.

    ``user_id`` is the run's owner; it is not part of the wire envelope but every
    delivery path checks it before writing the event to a connection.
    """

    type: EventType
    run_id: str
    thread_id: str
    user_id: str
    seq: int
    ts: str
    agent: str
    parent_agent: str | None
    data: Mapping[str, Any]
    payload: bytes

    @property
    def ends_run(self) -> bool:
        """True when this is the run's final event (terminal type, top-level agent)."""
        return self.parent_agent is None and self.type.is_terminal

    def envelope(self) -> dict[str, Any]:
        """The wire envelope as a dict."""
        return {
            "type": self.type.value,
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "seq": self.seq,
            "ts": self.ts,
            "agent": self.agent,
            "parent_agent": self.parent_agent,
            "data": dict(self.data),
        }

    @classmethod
    def build(
        cls,
        *,
        type: EventType,
        run_id: str,
        thread_id: str,
        user_id: str,
        seq: int,
        agent: str,
        parent_agent: str | None,
        data: Mapping[str, Any],
        ts: str | None = None,
    ) -> RunEvent:
        """Build an event and serialise its envelope once (``ts`` defaults to now)."""
        stamp = ts or utc_timestamp()
        # orjson's result keeps a ~4 KiB allocation whatever its length; an exact-size
        # copy makes a retained event ~40x smaller (see docs/benchmarks.md).
        payload = _compact(
            orjson.dumps(
                {
                    "type": type.value,
                    "run_id": run_id,
                    "thread_id": thread_id,
                    "seq": seq,
                    "ts": stamp,
                    "agent": agent,
                    "parent_agent": parent_agent,
                    "data": data,
                }
            )
        )
        return cls(type, run_id, thread_id, user_id, seq, stamp, agent, parent_agent, data, payload)

    @classmethod
    def from_payload(cls, payload: bytes, *, user_id: str) -> RunEvent:
        """Rebuild an event from its stored wire bytes (for logs and buses that keep bytes)."""
        raw = orjson.loads(payload)
        return cls(
            EventType(raw["type"]),
            raw["run_id"],
            raw["thread_id"],
            user_id,
            raw["seq"],
            raw["ts"],
            raw["agent"],
            raw["parent_agent"],
            raw["data"],
            payload,
        )


@runtime_checkable
class RunEventLog(Protocol):
    """Durable, ordered storage of run events; read back by run and owner."""

    async def append(self, event: RunEvent) -> None:
        """Store ``event``; returns once it is durable for this backend.

        An append whose caller is cancelled must still complete (or fail as a
        whole): the emitter counts a cancelled append's ``seq`` as used.
        """

    async def read(self, run_id: str, *, user_id: str, after: int = 0) -> list[RunEvent]:
        """The run's events with ``seq > after``, oldest first; none when not the owner's."""


class RunEventBus(Protocol):
    """Delivers published events to the subscribers of the event's owner only.

    The runtime only publishes; subscribing belongs to whoever delivers events
    (the in-process bus, or a node's relay of the Redis streams).
    """

    async def publish(self, event: RunEvent) -> None:
        """Deliver ``event`` to every subscription of ``event.user_id``."""


class EventRecorder:
    """Logs an event, then publishes it: the one way events leave a run."""

    def __init__(self, log: RunEventLog, bus: RunEventBus) -> None:
        self.log = log
        self.bus = bus
        self.clock = Timestamper()

    async def record(self, event: RunEvent) -> None:
        """Append to the log, then publish (never the other way round).

        A failed append raises: the event does not exist. A failed publish is only
        logged: the event is already durable and readers catch up from the log.
        """
        await self.log.append(event)
        try:
            await self.bus.publish(event)
        except Exception:
            logger.exception("publishing event %s#%d failed", event.run_id, event.seq)


class RunEmitter:
    """Emits the events of one run for one user, numbering them 1, 2, 3 … without gaps.

    After the run's terminal event the emitter is closed: any further emit raises
    ``RunClosedError``, which is how "exactly one terminal event" is enforced.
    Answer text goes through ``queue_delta`` (coalesced, see the module docstring).
    """

    def __init__(
        self,
        recorder: EventRecorder,
        *,
        user_id: str,
        run_id: str,
        thread_id: str,
        message_id: str,
    ) -> None:
        self._recorder = recorder
        self.user_id = user_id
        self.run_id = run_id
        self.thread_id = thread_id
        self.message_id = message_id
        self._seq = 0
        self._lock = asyncio.Lock()
        self._closed = False
        self._queued: list[str] = []
        self._queued_chars = 0
        self._delta_agent = ""
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._failure: Exception | None = None
        """Why logging queued text failed; raised at the run's next delta or event."""
        self.cpu = CpuMeter()
        """The run's CPU on the event loop: its engine's task and this emitter's flusher."""

    @property
    def closed(self) -> bool:
        """True once the terminal event was emitted."""
        return self._closed

    @property
    def seq(self) -> int:
        """The ``seq`` of the last event emitted (0 before the first)."""
        return self._seq

    async def emit(
        self,
        type: EventType,
        data: Mapping[str, Any],
        *,
        agent: str,
        parent_agent: str | None = None,
    ) -> RunEvent:
        """Number, log and publish one event of ``agent`` (sub-agents name their parent).

        Queued answer text is emitted first. If logging it failed, that error is
        raised here instead — except for an ``agent_error`` or ``agent_cancelled``
        ending the run, which can always be emitted.
        """
        async with self._lock:
            await self._drain()
            ending = parent_agent is None and type in _FAILED_ENDINGS
            if self._failure is not None and not ending:
                raise self._failure
            return await self._emit(type, data, agent=agent, parent_agent=parent_agent)

    async def queue_delta(self, text: str, *, agent: str) -> None:
        """Queue answer text of the top-level ``agent``; the flusher emits it.

        Returns at once (it waits only while more than ``MAX_QUEUED_DELTA``
        characters are queued); an earlier failure to log queued text is raised.
        """
        if self._closed:
            raise RunClosedError(f"run {self.run_id} already ended; message_delta dropped")
        if self._failure is not None:
            raise self._failure
        self._queued.append(text)
        self._queued_chars += len(text)
        self._delta_agent = agent
        if self._queued_chars > MAX_QUEUED_DELTA:
            await self.flush()  # the agent waits, and drains the queue itself
            return
        if self._flusher is None:  # one per run, woken for every delta (no task per delta)
            self._flusher = asyncio.create_task(self._flush(), name=f"deltas {self.run_id}")
        self._wake.set()

    async def flush(self) -> None:
        """Wait until every queued delta is logged and published (raise if that failed)."""
        async with self._lock:
            await self._drain()
            if self._failure is not None:
                raise self._failure

    async def _flush(self) -> None:
        await self.cpu.meter(self._flush_forever())  # the run's CPU, though in another task

    async def _flush_forever(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            async with self._lock:
                await self._drain()

    def release(self) -> None:
        """The run is over: stop its flusher (it stops by itself after the terminal event)."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()

    async def _drain(self) -> None:
        """Under the lock: emit the queued text as ``message_delta`` events."""
        while self._queued:
            text = "".join(self._queued)
            self._queued.clear()
            self._queued_chars = 0
            if self._failure is not None or self._closed:
                continue  # the run already failed to log its text: it will not complete
            data = {"message_id": self.message_id, "delta": text}
            try:
                await self._emit(EventType.MESSAGE_DELTA, data, agent=self._delta_agent)
            except Exception as exc:
                self._failure = exc

    async def _emit(
        self,
        type: EventType,
        data: Mapping[str, Any],
        *,
        agent: str,
        parent_agent: str | None = None,
    ) -> RunEvent:
        if self._closed:
            raise RunClosedError(f"run {self.run_id} already ended; {type.value} dropped")
        event = RunEvent.build(
            type=type,
            run_id=self.run_id,
            thread_id=self.thread_id,
            user_id=self.user_id,
            seq=self._seq + 1,
            agent=agent,
            parent_agent=parent_agent,
            data=data,
            ts=self._recorder.clock.now(),
        )
        try:
            await self._recorder.record(event)
        except asyncio.CancelledError:
            # A log never withdraws an append it accepted (see RunEventLog.append):
            # the event will be stored, so its seq is used.
            self._seq = event.seq
            self._closed = event.ends_run
            raise
        self._seq = event.seq
        self._closed = event.ends_run
        if self._closed:
            self._wake.set()  # the flusher sees the end and stops
        return event

    def for_agent(self, agent: str, parent_agent: str | None) -> AgentEmitter:
        """A view that labels events with ``agent`` and ``parent_agent``."""
        return AgentEmitter(self, agent=agent, parent_agent=parent_agent)


class AgentEmitter:
    """What an agent sees of the run's emitter: its own events, labelled with its name.

    A sub-agent (``parent_agent`` set) does not stream ``message_delta``: its answer
    goes to its caller and appears in its own ``agent_completed``.
    """

    def __init__(self, run: RunEmitter, *, agent: str, parent_agent: str | None) -> None:
        self._run = run
        self.agent = agent
        self.parent_agent = parent_agent
        self._step = 0
        self._streamed: list[str] = []

    @property
    def streamed_text(self) -> str:
        """All answer text this emitter has streamed so far."""
        return "".join(self._streamed)

    @property
    def streams_answer(self) -> bool:
        """True for the top-level agent, whose deltas are the run's answer."""
        return self.parent_agent is None

    async def emit(self, type: EventType, data: Mapping[str, Any]) -> RunEvent:
        """Emit an event labelled with this agent."""
        return await self._run.emit(type, data, agent=self.agent, parent_agent=self.parent_agent)

    async def thinking(self, text: str, step: int | None = None) -> None:
        """Emit ``agent_thinking``; steps count from 1 per agent unless given."""
        if step is None:
            self._step += 1
            step = self._step
        else:
            self._step = step
        await self.emit(EventType.AGENT_THINKING, {"text": text, "step": step})

    async def delta(self, text: str) -> None:
        """Stream ``text`` of the run's answer (top-level agent only; coalesced, see above)."""
        if text and self.streams_answer:
            await self._run.queue_delta(text, agent=self.agent)
            self._streamed.append(text)

    async def flush(self) -> None:
        """Wait until the streamed text is logged and published."""
        await self._run.flush()
