"""The session cache: reuse for a few seconds, never past a revocation; the watch that ends
what a session has open (sockets, streams) when it ends."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import UTC, datetime

import pytest

from atoll.auth.principal import Principal
from atoll.auth.sessions import SessionCache
from atoll.bus.memory import InMemoryEventBus, SessionEnded
from atoll.server.session_watch import SessionWatch

pytestmark = pytest.mark.unit


def principal(session_id: str = "ses_a", user_id: str = "usr_a") -> Principal:
    return Principal(
        user_id=user_id, session_id=session_id, email="a@example.com", name=None, plan="free",
        roles=frozenset(), created_at=datetime.now(UTC),
    )  # fmt: skip


def test_a_session_is_reused_until_its_lifetime_ends() -> None:
    now = [0.0]
    cache = SessionCache(10.0, clock=lambda: now[0])
    cache.put(principal(), epoch=cache.epoch)
    now[0] = 9.9
    cached = cache.get("ses_a")
    assert cached is not None
    assert cached.session_id == "ses_a"
    now[0] = 10.0
    assert cache.get("ses_a") is None
    assert len(cache) == 0


def test_a_read_that_began_before_a_revocation_is_not_cached() -> None:
    cache = SessionCache(10.0)
    epoch = cache.epoch  # a request reads the session from the database ...
    cache.invalidate("ses_a")  # ... while it is revoked
    cache.put(principal(), epoch=epoch)
    assert cache.get("ses_a") is None
    cache.put(principal(), epoch=cache.epoch)
    assert cache.get("ses_a") is not None
    cache.invalidate("ses_a")
    assert cache.get("ses_a") is None


def test_nothing_is_cached_while_revocations_may_be_missed() -> None:
    cache = SessionCache(10.0)
    cache.put(principal(), epoch=cache.epoch)
    cache.distrust()
    assert cache.get("ses_a") is None
    cache.put(principal(), epoch=cache.epoch)
    assert cache.get("ses_a") is None
    cache.trust()
    assert cache.get("ses_a") is None  # what was cached before the outage is gone
    cache.put(principal(), epoch=cache.epoch)
    assert cache.get("ses_a") is not None


def test_a_lifetime_of_zero_caches_nothing_and_the_size_is_bounded() -> None:
    off = SessionCache(0)
    off.put(principal(), epoch=off.epoch)
    assert off.get("ses_a") is None
    small = SessionCache(10.0, max_entries=3)
    for index in range(5):
        small.put(principal(f"ses_{index}"), epoch=small.epoch)
    assert len(small) == 3
    assert small.get("ses_0") is None
    assert small.get("ses_4") is not None


def key(key_id: str = "key_a") -> Principal:
    return Principal(
        user_id="usr_a", session_id=key_id, email="a@example.com", name=None, plan="free",
        roles=frozenset(), created_at=datetime.now(UTC), scopes=frozenset({"chat"}),
    )  # fmt: skip


def test_ending_a_session_ends_every_open_subscription_held_for_it_and_no_other() -> None:
    cache = SessionCache(10.0)
    watch = SessionWatch(cache)
    bus = InMemoryEventBus()
    tab, stream, other = bus.subscribe("usr_a"), bus.subscribe("usr_a"), bus.subscribe("usr_a")
    watch.hold(principal("ses_a"), tab)
    watch.hold(principal("ses_a"), stream)
    watch.hold(key("key_a"), other)
    cache.put(principal("ses_a"), epoch=cache.epoch)
    assert watch.end("ses_a", "removed_from_org") == 2
    assert tab.drain() == [SessionEnded("removed_from_org")]
    assert stream.drain() == [SessionEnded("removed_from_org")]
    assert other.drain() == []
    assert cache.get("ses_a") is None  # refused here from now on
    assert watch.end("ses_a", "logout") == 0  # once
    assert [p.session_id for p in watch.held()] == ["key_a"]
    assert watch.end("key_a", "logout") == 1
    assert other.drain() == [SessionEnded("session_revoked")]  # what a client is told


def test_closed_subscriptions_are_let_go() -> None:
    watch = SessionWatch(SessionCache(10.0))
    bus = InMemoryEventBus()
    gone, kept = bus.subscribe("usr_a"), bus.subscribe("usr_a")
    watch.hold(principal("ses_a"), gone)
    watch.hold(principal("ses_b"), kept)
    asyncio.run(gone.aclose())
    assert [p.session_id for p in watch.held()] == ["ses_b"]
    assert watch.end("ses_a", "logout") == 0


async def test_the_check_ends_what_the_database_says_ended_and_survives_its_failures() -> None:
    watch = SessionWatch(SessionCache(10.0))
    bus = InMemoryEventBus()
    ended, alive = bus.subscribe("usr_a"), bus.subscribe("usr_a")
    watch.hold(principal("ses_a"), ended)
    watch.hold(key("key_a"), alive)
    asked: list[set[str]] = []

    async def failing(held: Collection[Principal]) -> dict[str, str]:
        raise OSError("the database is down")

    async def database(held: Collection[Principal]) -> dict[str, str]:
        asked.append({p.session_id for p in held})
        return {"ses_a": "removed_from_org"}

    await watch.check(failing)  # logged; nothing ends, the next check tries again
    assert ended.drain() == []
    await watch.check(database)
    assert asked == [{"ses_a", "key_a"}]
    assert ended.drain() == [SessionEnded("removed_from_org")]
    assert alive.drain() == []
    await watch.check(database)
    assert asked[-1] == {"key_a"}
