"""Refresh-token rotation on SQLite and PostgreSQL: concurrent refreshes with one token
(in one process, and from two "nodes" with their own connections and writers) get one
and the same new pair; the spent token after the reuse interval, or two generations
old, revokes the session. The clock is injected: no test waits for time to pass."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

import jwt
import pytest

from atoll.auth.passwords import Passwords
from atoll.auth.service import AuthService, IssuedTokens, LoginLimits
from atoll.auth.tokens import TokenCodec
from atoll.errors import RefreshReuseError, SessionRevokedError
from atoll.ratelimit import LocalRateLimiter, SlidingWindowCounter
from atoll.store.audit import AuditLog
from atoll.store.db import Database
from atoll.store.models import OrgProvider, utcnow
from atoll.store.orgs import OrgStore

pytestmark = [pytest.mark.integration, pytest.mark.security]

SECRET = "rotation-test-signing-key-0123456789abcdef0123456789"
REUSE = 10.0


class Clock:
    """A settable clock for ``AuthService``."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Announced(list[tuple[str, str]]):
    """The ``RevocationNotifier`` of a test: what was announced (a server ends the
    session's sockets and streams on every node with it)."""

    async def publish(self, session_id: str, reason: str) -> None:
        self.append((session_id, reason))


def auth_service(
    db: Database, clock: Callable[[], datetime], announced: Announced | None = None
) -> AuthService:
    codec = TokenCodec(
        SECRET, issuer="atoll", audience="atoll-api", access_ttl=900, refresh_ttl=86400
    )
    return AuthService(
        db, codec, Passwords(time_cost=1, memory_kib=64), AuditLog(db),
        failures=SlidingWindowCounter(900), limits=LoginLimits(),
        signups=LocalRateLimiter(100, 3600), refresh_reuse=REUSE, clock=clock,
        revocations=announced,
    )  # fmt: skip


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def announced() -> Announced:
    return Announced()


@pytest.fixture
async def signed_in(
    database: Database, clock: Clock, announced: Announced
) -> tuple[AuthService, IssuedTokens]:
    auth = auth_service(database, clock, announced)
    user = await auth.create_user("ada@example.com", "correct horse battery")
    return auth, await auth.session_for(user, None)


@pytest.fixture
async def second_node(database: Database) -> AsyncIterator[Database]:
    """Another process's view of the same database: its own engine, pool and writer."""
    other = Database(database.url)
    other.start()
    yield other
    await other.dispose()


def pair(issued: IssuedTokens) -> tuple[str, str]:
    return issued.access_token, issued.refresh_token


async def test_concurrent_refreshes_get_the_same_new_pair(
    signed_in: tuple[AuthService, IssuedTokens],
) -> None:
    auth, first = signed_in
    answers = await asyncio.gather(*(auth.refresh(first.refresh_token) for _ in range(5)))
    assert len({pair(answer) for answer in answers}) == 1
    assert pair(answers[0]) != pair(first)
    principal = await auth.authenticate(answers[0].access_token)
    assert principal.email == "ada@example.com"
    following = await auth.refresh(answers[0].refresh_token)  # the family goes on
    assert (await auth.authenticate(following.access_token)).email == "ada@example.com"


async def test_two_nodes_refreshing_at_once_agree_from_the_database(
    signed_in: tuple[AuthService, IssuedTokens], second_node: Database, clock: Clock
) -> None:
    auth, first = signed_in
    elsewhere = auth_service(second_node, clock)
    here, there = await asyncio.gather(
        auth.refresh(first.refresh_token), elsewhere.refresh(first.refresh_token)
    )
    assert pair(here) == pair(there)
    assert (await elsewhere.authenticate(here.access_token)).email == "ada@example.com"


async def test_the_spent_token_within_the_interval_gets_the_same_pair(
    signed_in: tuple[AuthService, IssuedTokens], clock: Clock
) -> None:
    auth, first = signed_in
    rotated = await auth.refresh(first.refresh_token)
    clock.advance(REUSE - 1)
    again = await auth.refresh(first.refresh_token)  # a retry after a timeout
    assert pair(again) == pair(rotated)
    assert again.expires_in == rotated.expires_in - (REUSE - 1)  # the same token's time left


async def test_the_spent_token_after_the_interval_revokes_the_session(
    signed_in: tuple[AuthService, IssuedTokens], clock: Clock, announced: Announced
) -> None:
    auth, first = signed_in
    rotated = await auth.refresh(first.refresh_token)
    session_id = (await auth.authenticate(rotated.access_token)).session_id
    clock.advance(REUSE)
    with pytest.raises(RefreshReuseError):
        await auth.refresh(first.refresh_token)
    assert announced == [(session_id, "session_revoked")]  # its sockets and streams end
    with pytest.raises(SessionRevokedError):
        await auth.authenticate(rotated.access_token)
    with pytest.raises(SessionRevokedError):
        await auth.refresh(rotated.refresh_token)


async def test_a_token_two_rotations_old_revokes_at_once(
    signed_in: tuple[AuthService, IssuedTokens],
) -> None:
    auth, first = signed_in
    second = await auth.refresh(first.refresh_token)
    third = await auth.refresh(second.refresh_token)
    with pytest.raises(RefreshReuseError):
        await auth.refresh(first.refresh_token)  # within the interval, but not the last spent
    with pytest.raises(SessionRevokedError):
        await auth.authenticate(third.access_token)


async def test_a_policy_change_ends_password_sessions_and_a_refresh_checks_it_again(
    database: Database, clock: Clock, announced: Announced
) -> None:
    auth = auth_service(database, clock, announced)
    orgs = OrgStore(database)
    org = await orgs.create("Example")
    await orgs.add_domain(org.id, "example.com")
    ada = await auth.create_user("ada@example.com", "correct horse battery")
    eve = await auth.create_user("eve@elsewhere.test", "correct horse battery")
    by_password = await auth.session_for(ada, None)
    by_provider = await auth.session_for(ada, "acme")
    outsider = await auth.session_for(eve, None)
    assert await orgs.set_policy(org.id, sso_required=True) == [session_of(by_password)]
    with pytest.raises(SessionRevokedError):
        await auth.refresh(by_password.refresh_token)
    by_provider = await auth.refresh(by_provider.refresh_token)
    await auth.refresh(outsider.refresh_token)
    # A session that began in the instant the policy changed (here: the policy changes
    # behind the sweep's back) ends at its next refresh, its sockets and streams with it.
    slipped = await auth.session_for(ada, "social")
    await database.write(lambda session: session.add(OrgProvider(org_id=org.id, provider="acme")))
    with pytest.raises(SessionRevokedError):
        await auth.refresh(slipped.refresh_token)
    assert announced == [(session_of(slipped), "session_revoked")]
    assert await orgs.set_policy(org.id, providers=["acme"]) == []  # acme's session stays
    await auth.refresh(by_provider.refresh_token)


def session_of(issued: IssuedTokens) -> str:
    """The session id in a token (read, not verified: the test made it)."""
    return str(jwt.decode(issued.refresh_token, options={"verify_signature": False})["sid"])
