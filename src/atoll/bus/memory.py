"""In-process run event log and bus: the embedded default and the runtime's test double.

Both are plain objects built by whoever owns the process (the app's lifespan,
a test, a benchmark); nothing here is module-level.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from atoll.runtime.events import RunEvent


@dataclass(frozen=True, slots=True)
class Resync:
    """Delivered to subscribers when events may have been missed (the relay lost Redis).

    Whoever follows runs re-reads the log from the last ``seq`` it has.
    """


@dataclass(frozen=True, slots=True)
class Notice:
    """A change to one user's threads or messages (``thread_created``, ``thread_updated``,
    ``thread_deleted``, ``message_created``), pushed to that user's sockets so their other
    tabs follow. Best effort and not logged: a client that reconnects re-reads what it shows.
    """

    user_id: str
    frame: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Closing:
    """Delivered to subscribers when the process shuts down: whoever follows runs stops."""


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """Delivered to the subscriptions held for a session that ended (logout, revocation,
    removal…): the socket or stream that reads it stops (``atoll.server.session_watch``)."""

    code: str
    """What the client is told: ``session_revoked`` or ``removed_from_org``."""


Delivered = RunEvent | Notice | Resync | Closing | SessionEnded
"""What a subscription delivers."""


class SubscriptionOverflowError(Exception):
    """Raised to a subscriber that fell further behind than its queue allows."""


class InMemoryRunEventLog:
    """Keeps every run's events in memory, in ``seq`` order, for the retention period."""

    def __init__(
        self, *, retention: float = 24 * 3600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.retention = retention
        self._clock = clock
        self._events: dict[str, list[RunEvent]] = {}
        self._touched: dict[str, float] = {}

    async def append(self, event: RunEvent) -> None:
        """Store ``event`` at the end of its run's log; ``seq`` must follow the last one."""
        events = self._events.setdefault(event.run_id, [])
        expected = len(events) + 1
        if event.seq != expected:
            raise ValueError(f"run {event.run_id}: seq {event.seq} appended, {expected} expected")
        events.append(event)
        self._touched[event.run_id] = self._clock()

    async def read(self, run_id: str, *, user_id: str, after: int = 0) -> list[RunEvent]:
        """The run's events with ``seq > after``; empty for another user's run."""
        events = self._events.get(run_id)
        if not events or events[0].user_id != user_id:
            return []
        return events[max(after, 0) :]

    def prune(self) -> int:
        """Drop the logs of runs untouched for longer than the retention period."""
        cutoff = self._clock() - self.retention
        stale = [run_id for run_id, touched in self._touched.items() if touched < cutoff]
        for run_id in stale:
            del self._events[run_id]
            del self._touched[run_id]
        return len(stale)


class MemorySubscription:
    """One subscriber's bounded queue of one user's events."""

    def __init__(self, bus: InMemoryEventBus, user_id: str, max_queue: int) -> None:
        self._bus = bus
        self.user_id = user_id
        self._queue: asyncio.Queue[Delivered] = asyncio.Queue(max_queue)
        self.overflowed = False
        self.closed = False

    def offer(self, event: Delivered) -> None:
        """Queue ``event``, or mark the subscription overflowed when it is full."""
        if isinstance(event, RunEvent | Notice) and event.user_id != self.user_id:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    async def get(self) -> Delivered:
        """The next event (or ``Resync``); ``SubscriptionOverflowError`` if events were dropped."""
        if self.overflowed:
            raise SubscriptionOverflowError(f"subscriber of {self.user_id} fell behind")
        event = await self._queue.get()
        return event

    def drain(self) -> list[Delivered]:
        """Every event queued right now, without waiting."""
        if self.overflowed:
            raise SubscriptionOverflowError(f"subscriber of {self.user_id} fell behind")
        events: list[Delivered] = []
        while not self._queue.empty():
            events.append(self._queue.get_nowait())
        return events

    async def __aiter__(self) -> AsyncIterator[Delivered]:
        while not self.closed:
            yield await self.get()

    async def aclose(self) -> None:
        """Unsubscribe."""
        self.closed = True
        self._bus.unsubscribe(self)


class EventSubscriptions(Protocol):
    """Where a process subscribes to a user's events: its own bus, or (scaled out) the
    relay that feeds it from Redis. Picked once, in the wiring."""

    async def subscribe(self, user_id: str) -> MemorySubscription:
        """A subscription to ``user_id``'s events from now on."""


class LocalSubscriptions:
    """``EventSubscriptions`` of one process: every event is produced here."""

    def __init__(self, bus: InMemoryEventBus) -> None:
        self._bus = bus

    async def subscribe(self, user_id: str) -> MemorySubscription:
        """A subscription to ``user_id``'s events on this process's bus."""
        return self._bus.subscribe(user_id)


class InMemoryEventBus:
    """Fans events out to the subscriptions of their owner, within one process."""

    def __init__(self, *, max_queue: int = 10_000) -> None:
        self.max_queue = max_queue
        self._subscribers: defaultdict[str, set[MemorySubscription]] = defaultdict(set)

    async def publish(self, event: RunEvent) -> None:
        """Deliver ``event`` to every subscription of ``event.user_id`` (none else)."""
        for subscription in self._subscribers.get(event.user_id, ()):
            subscription.offer(event)

    def notify(self, notice: Notice) -> None:
        """Deliver ``notice`` to every subscription of ``notice.user_id`` (none else)."""
        for subscription in self._subscribers.get(notice.user_id, ()):
            subscription.offer(notice)

    def resync(self) -> None:
        """Tell every subscription that events may have been missed."""
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription.offer(Resync())

    def closing(self) -> None:
        """Tell every subscription that this process is shutting down."""
        for subscriptions in list(self._subscribers.values()):
            for subscription in list(subscriptions):
                subscription.offer(Closing())

    def subscribe(self, user_id: str) -> MemorySubscription:
        """Subscribe to ``user_id``'s events from now on."""
        subscription = MemorySubscription(self, user_id, self.max_queue)
        self._subscribers[user_id].add(subscription)
        return subscription

    def unsubscribe(self, subscription: MemorySubscription) -> None:
        """Remove ``subscription``; unknown ones are ignored."""
        subscribers = self._subscribers.get(subscription.user_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.user_id]

    def subscriber_count(self, user_id: str) -> int:
        """How many subscriptions ``user_id`` has."""
        return len(self._subscribers.get(user_id, ()))
