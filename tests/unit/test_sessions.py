"""The session cache: reuse for a few seconds, never past a revocation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from atoll.auth.principal import Principal
from atoll.auth.sessions import SessionCache

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
