"""Following a run: one cursor per (subscriber, run), for every way a run is read.

A WebSocket follows many runs (a ``RunCursor`` each), an SSE stream, a streamed
POST, the OpenAI-compatible door and AG-UI follow one (``follow_run`` holds one
cursor). Whatever arrives — a live event from the bus, a resync after lost
publishes, a replay from the log — goes through the cursor, which hands back the
events to deliver, in ``seq`` order, each once: live ones it has seen are dropped,
a gap before a live one is filled from the log first. So ordering, gap filling and
resyncing are written once.
"""

from __future__ import annotations

from atoll.runtime.events import RunEvent, RunEventLog


class RunCursor:
    """One subscriber's place in one run: the ``seq`` of the last event it was given."""

    __slots__ = ("_log", "ended", "last", "run_id", "user_id")

    def __init__(self, log: RunEventLog, *, run_id: str, user_id: str, after: int = 0) -> None:
        self._log = log
        self.run_id = run_id
        self.user_id = user_id
        self.last = after
        self.ended = False
        """Whether the run's terminal event was handed out: nothing follows it."""

    async def take(self, event: RunEvent) -> list[RunEvent]:
        """What to deliver now that ``event`` arrived live: nothing when it was already
        delivered (or is not this run's, or the run ended), else the logged events of the
        gap before it, then it."""
        if self.ended or event.run_id != self.run_id or event.user_id != self.user_id:
            return []
        if event.seq <= self.last:
            return []
        if event.seq == self.last + 1:
            return self._advance([event])
        missed = await self._log.read(self.run_id, user_id=self.user_id, after=self.last)
        return self._advance([*(m for m in missed if m.seq < event.seq), event])

    async def catch_up(self) -> list[RunEvent]:
        """The run's logged events after this cursor (a resume, a resend, a resync)."""
        if self.ended:
            return []
        return self._advance(
            await self._log.read(self.run_id, user_id=self.user_id, after=self.last)
        )

    def _advance(self, events: list[RunEvent]) -> list[RunEvent]:
        given: list[RunEvent] = []
        for event in events:
            if self.ended or event.seq != self.last + 1:
                continue  # a read raced a live delivery: keep the order, skip what is out of it
            given.append(event)
            self.last = event.seq
            self.ended = event.ends_run
        return given
