"""Ending what a session has open here — its sockets and streams — when the session ends.

Every subscription a request or a socket makes is held under the session (or API
key) that opened it (``Services.subscribe``). When the session ends, each of them is
offered ``SessionEnded``: a socket's reader closes it with 4401, a stream ends with
its door's error (docs/protocol.md). A session ends here by one of three paths:

- in this process (logout, refresh reuse, removal, a revoked key, a sign-in policy):
  ``AuthService`` announces it through ``Revocations``, which ends it here at once
  and publishes it for the other processes;
- scaled out, from another node: the Redis revocation listener calls ``end``;
- from a process that cannot tell us (``atoll org remove`` beside a single
  ``atoll serve``, an operator's SQL) or an announcement that was lost: ``watch``
  asks the database, every ``ATOLL_SESSION_CHECK_SECONDS``, which of the sessions
  held here have ended, with the same rules as every request
  (``AuthService.ended``). One indexed read per 500 sessions held, whatever
  happens: the cost is the number of open sessions, not of revocations.

Besides, a socket checks its session again for every frame that starts work
(``atoll.server.websocket``), so nothing starts on a session that has ended even in
the instant before its socket closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection

from atoll.aio import run_every
from atoll.auth.principal import Principal
from atoll.auth.service import ended_code
from atoll.auth.sessions import RevocationNotifier, SessionCache
from atoll.bus.memory import MemorySubscription, SessionEnded

logger = logging.getLogger(__name__)

EndedCheck = Callable[[Collection[Principal]], Awaitable[dict[str, str]]]
"""``AuthService.ended``: which of these principals' sessions ended, with why."""


class SessionWatch:
    """The subscriptions of this process, by the session (or key) they were opened with."""

    def __init__(self, cache: SessionCache) -> None:
        self.cache = cache
        """The process's session cache: an ended session is forgotten there too."""
        self._held: dict[str, tuple[Principal, set[MemorySubscription]]] = {}

    def hold(self, principal: Principal, subscription: MemorySubscription) -> None:
        """End ``subscription`` when ``principal``'s session ends (until it is closed)."""
        entry = self._held.get(principal.session_id)
        if entry is None:
            self._held[principal.session_id] = (principal, {subscription})
        else:
            entry[1].add(subscription)

    def end(self, session_id: str, reason: str) -> int:
        """``session_id`` ended for ``reason``: refuse it here from now on (the session
        cache), and end every open subscription held for it; how many."""
        self.cache.invalidate(session_id)
        entry = self._held.pop(session_id, None)
        if entry is None:
            return 0
        ended = SessionEnded(ended_code(reason))
        open_ones = [s for s in entry[1] if not s.closed]
        for subscription in open_ones:
            subscription.offer(ended)
        return len(open_ones)

    def held(self) -> list[Principal]:
        """The sessions with something open here (closed subscriptions are let go)."""
        for session_id, (_, subscriptions) in list(self._held.items()):
            subscriptions.difference_update([s for s in subscriptions if s.closed])
            if not subscriptions:
                del self._held[session_id]
        return [principal for principal, _ in self._held.values()]

    async def check(self, ended: EndedCheck) -> None:
        """Ask the database which held sessions ended, and end them here."""
        held = self.held()
        if not held:
            return
        try:
            endings = await ended(held)
        except Exception:
            logger.warning("could not check open sessions; retrying", exc_info=True)
            return
        for session_id, reason in endings.items():
            self.end(session_id, reason)

    async def watch(self, stop: asyncio.Event, *, ended: EndedCheck, interval: float) -> None:
        """``check`` every ``interval`` seconds until ``stop`` is set."""
        await run_every(interval, stop, lambda: self.check(ended))


class Revocations:
    """The ``RevocationNotifier`` of a server: a revocation made here ends the session's
    sockets and streams here at once, then goes to the other processes (``remote``:
    Redis, scaled out), whose listeners call ``SessionWatch.end``."""

    def __init__(self, watch: SessionWatch, remote: RevocationNotifier | None) -> None:
        self._watch = watch
        self._remote = remote

    async def publish(self, session_id: str, reason: str) -> None:
        """End ``session_id`` here, then announce it (raises if the announcement failed)."""
        self._watch.end(session_id, reason)
        if self._remote is not None:
            await self._remote.publish(session_id, reason)
