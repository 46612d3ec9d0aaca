"""Register, log in, refresh, log out — and ``authenticate``, the one validation path.

``AuthService.authenticate`` is the only function that turns a bearer token into
an identity; HTTP routes and the WebSocket both call it. Identity never comes
from a request body or query.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, NoReturn

from atoll.auth.devices import DeviceCookies
from atoll.auth.keys import key_digest, key_id_of, usable
from atoll.auth.passwords import Passwords
from atoll.auth.principal import Principal
from atoll.auth.sessions import RevocationNotifier, SessionCache
from atoll.auth.tokens import TokenClaims, TokenCodec
from atoll.errors import (
    AuthenticationError,
    EmailTakenError,
    InvalidCredentialsError,
    RateLimitedError,
    RefreshReuseError,
    RemovedFromOrgError,
    SessionRevokedError,
    SignInError,
    SSORequiredError,
    ValidationFailedError,
)
from atoll.ratelimit import FailureCounter, RateLimiter
from atoll.runtime.ids import new_id
from atoll.store.accounts import AccountStore, PrincipalRows, RefreshSeen
from atoll.store.audit import AuditLog
from atoll.store.db import Database
from atoll.store.models import ApiKey, AuthSession, User, utcnow
from atoll.store.orgs import SSO_REQUIRED as SSO_REFUSAL
from atoll.store.orgs import OrgStore

logger = logging.getLogger(__name__)
SSO_REQUIRED = "your organisation requires signing in with its identity provider"
REMOVED = "your organisation removed you; ask its admin"
REMOVED_FROM_ORG = "removed_from_org"
"""Why the sessions of a member removed from their organisation ended (``revoked_reason``)."""
ENDED = "session_revoked"
"""What a client is told when its session (or key) ended, unless it was removed."""

_NOT_IN_ADDRESS = r"@\x00-\x20\x7f"
EMAIL_SHAPE = rf"[^{_NOT_IN_ADDRESS}]{{1,64}}@[^{_NOT_IN_ADDRESS}]+\.[^{_NOT_IN_ADDRESS}]+"
"""What an email address must look like (after trimming): no spaces or control characters.

Spelled with explicit ranges, not ``\\s``, so Python and the JSON Schema regex engines of
clients agree on it character for character."""
_EMAIL = re.compile(f"^{EMAIL_SHAPE}$")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
DEFAULT_REFRESH_REUSE = 10.0
"""Seconds a spent refresh token still gets the pair it was traded for (two tabs, a retry)."""


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    """A fresh access/refresh pair for one user (and, after a password, a device cookie)."""

    user: User
    access_token: str
    refresh_token: str
    expires_in: int
    device_cookie: str | None = None
    """For the client to keep (``atoll.auth.devices``); None: nothing to set."""


@dataclass(frozen=True, slots=True)
class Credential:
    """What a genuine bearer token names: a session (an access token's), or an API key.

    The first half of the one validation (``AuthService.credential_of``); the second,
    ``AuthService.principal_for``, reads what it names as it is now.
    """

    session_id: str
    """The session's id, or the key's."""
    user_id: str | None
    """The access token's user; None for a key (its owner is read with it)."""
    key_digest: str | None = None
    """A key's digest, compared with the stored one on every check; None: an access token."""


@dataclass(frozen=True, slots=True)
class _Rotation:
    """What one refresh did to its session row (see ``AuthService.refresh``)."""

    outcome: Literal["rotated", "replayed", "reused", "refused"]
    """A new pair; the last pair again (within the reuse interval); the session revoked for
    reuse; the session ended because its organisation no longer allows how it began."""
    user: User | None = None
    refresh_jti: str = ""
    access_jti: str = ""
    issued_at: datetime | None = None


def canonical_email(email: str) -> str:
    """``email`` as stored and compared: spaces and tabs trimmed, ASCII letters lower-cased
    (which never changes its length, unlike ``str.lower``)."""
    return email.strip(" \t").translate(_ASCII_LOWER)


def normalise_email(email: str) -> str:
    """``canonical_email``; ``ValidationFailedError`` when it is not an email address."""
    value = canonical_email(email)
    if not _EMAIL.fullmatch(value) or len(value) > 320:
        raise ValidationFailedError(
            "invalid email", [{"loc": ["body", "email"], "msg": "not a valid email address"}]
        )
    return value


def check_password(password: str) -> None:
    """``ValidationFailedError`` unless 8 to 1024 characters."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValidationFailedError(
            "invalid password",
            [
                {
                    "loc": ["body", "password"],
                    "msg": f"must be {MIN_PASSWORD} to {MAX_PASSWORD} characters",
                }
            ],
        )


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """Failed logins allowed within the failure window, and sign-ups per address.

    ``per_email`` counts one email's failures from one client address: a stranger
    guessing locks out only themselves. ``per_address`` counts one address's
    failures over every email (password spraying), ``per_account`` one email's
    failures from every address (a distributed attack on one account).
    """

    per_email: int = 10
    per_address: int = 50
    per_account: int = 100

    def keys(self, email: str, address: str) -> dict[str, int]:
        """The failure keys one attempt of an untrusted client counts against, with limits."""
        return {
            f"pair:{address}:{email}": self.per_email,
            f"address:{address}": self.per_address,
            f"account:{email}": self.per_account,
        }

    def device_keys(self, nonce: str) -> dict[str, int]:
        """The failure key of a trusted client (a valid device cookie): its own, alone."""
        return {f"device:{nonce}": self.per_email}


def session_live(row: AuthSession) -> bool:
    """Whether a session row may authenticate (the rule for one and for many at once)."""
    return row.revoked_at is None


def ended_code(reason: str | None) -> str:
    """What a socket or stream of a session that ended for ``reason`` is told:
    ``removed_from_org`` for a removed member, else ``session_revoked``."""
    return REMOVED_FROM_ORG if reason == REMOVED_FROM_ORG else ENDED


def principal_of(
    found: PrincipalRows[AuthSession] | PrincipalRows[ApiKey],
    scopes: frozenset[str] | None = None,
) -> Principal:
    """The principal of a verified session or API key (``scopes``: the key's)."""
    user = found.user
    return Principal(
        user_id=user.id,
        session_id=found.credential.id,
        email=user.email,
        name=user.name,
        plan=found.plan,
        roles=frozenset(user.roles or ()),
        created_at=user.created_at,
        org_id=found.org_id,
        org_role=found.org_role,
        scopes=scopes,
    )


class AuthService:
    """Accounts and sessions of one deployment."""

    def __init__(
        self,
        db: Database,
        codec: TokenCodec,
        passwords: Passwords,
        audit: AuditLog,
        *,
        failures: FailureCounter,
        limits: LoginLimits,
        signups: RateLimiter,
        sessions: SessionCache | None = None,
        revocations: RevocationNotifier | None = None,
        orgs: OrgStore | None = None,
        default_plan: str = "free",
        refresh_reuse: float = DEFAULT_REFRESH_REUSE,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._accounts = AccountStore(db)
        self.default_plan = default_plan
        """The plan new accounts get (``ATOLL_DEFAULT_PLAN``); an organisation's overrides it."""
        self._orgs = orgs if orgs is not None else OrgStore(db)
        self._codec = codec
        self._passwords = passwords
        self._audit = audit
        self._failures = failures
        self._limits = limits
        self._signups = signups
        self.sessions = sessions if sessions is not None else SessionCache(ttl=0)
        self._revocations = revocations
        self.refresh_reuse = timedelta(seconds=refresh_reuse)
        """How long a spent refresh token gets its pair again instead of revoking."""
        self._clock = clock
        self.devices = DeviceCookies(codec.derived_key("atoll device cookie"))

    async def create_user(
        self,
        email: str,
        password: str,
        *,
        name: str | None = None,
        plan: str | None = None,
        roles: frozenset[str] = frozenset(),
    ) -> User:
        """Create an account (``EmailTakenError`` if the email is used)."""
        address = normalise_email(email)
        check_password(password)
        hashed = await self._passwords.hash(password)
        user = User(
            id=new_id("usr"),
            email=address,
            name=name,
            password_hash=hashed,
            plan=plan or self.default_plan,
            roles=sorted(roles),
            created_at=utcnow(),
        )
        if not await self._accounts.add_user(user):
            raise EmailTakenError("an account with this email already exists")
        return user

    async def register(
        self, email: str, password: str, name: str | None, *, address: str
    ) -> IssuedTokens:
        """Create an account and log it in (sign-ups are rate-limited per client address)."""
        normalised = normalise_email(email)
        check_password(password)
        if await self._orgs.requires_sso(normalised):
            raise SSORequiredError(SSO_REQUIRED)
        retry_after = await self._signups.hit(f"signup:{address}")
        if retry_after is not None:
            raise RateLimitedError(
                f"too many sign-ups from this address; retry in {retry_after:.0f}s",
                retry_after=retry_after,
            )
        user = await self.create_user(email, password, name=name)
        await self._audit.record("register", user_id=user.id)
        return await self._start_session(user, device=True)

    async def _reserve(
        self, email: str, address: str, device: str | None
    ) -> tuple[dict[str, int], str]:
        """A place under the failure limits for one login attempt: the device cookie's own
        limit for a trusted client (while it has not failed too often), else the limits of
        untrusted clients. The keys reserved and the reservation's token."""
        nonce = self.devices.nonce(device, email)
        if nonce is not None:
            keys = self._limits.device_keys(nonce)
            reservation = await self._failures.reserve(keys)
            if reservation.token is not None:
                return keys, reservation.token
        keys = self._limits.keys(email, address)
        reservation = await self._failures.reserve(keys)
        if reservation.token is None:
            await self._audit.record_sampled("login_rate_limited", key=address, email=email)
            raise RateLimitedError(
                "too many failed logins; try again later", retry_after=reservation.retry_after
            )
        return keys, reservation.token

    async def login(
        self, email: str, password: str, *, address: str, device: str | None = None
    ) -> IssuedTokens:
        """Check the password and start a session. Wrong password and unknown email look alike.

        The attempt reserves its place under the failure limits *before* the
        password is hashed, so a burst of concurrent guesses gets at most the
        limit through; a success gives its place back. ``device``: the client's
        device cookie, if it sent one (``atoll.auth.devices``).
        """
        email = canonical_email(email)
        keys, token = await self._reserve(email, address, device)
        try:
            user = await self._accounts.user_by_email(email)
            # An account made by a sign-in has no password: the same work as an unknown one.
            usable = user.password_hash if user and not user.password_hash.startswith("!") else None
            verified = await self._passwords.verify(usable, password)
            removed = verified and user is not None and await self._orgs.is_removed(user.id)
        except BaseException:
            await self._failures.release(keys, token)  # not a failed guess
            raise
        if not verified or user is None:
            await self._audit.record(
                "login_failed", user_id=user.id if user else None, email=email, address=address
            )
            raise InvalidCredentialsError("wrong email or password")
        await self._failures.release(keys, token)
        if removed:  # told only to whoever knows the password
            await self._audit.record("login_refused_removed", user_id=user.id, email=email)
            raise RemovedFromOrgError(REMOVED)
        try:
            issued = await self._start_session(user, device=True)
        except SSORequiredError:
            await self._audit.record("login_refused_sso", user_id=user.id, email=email)
            raise
        await self._failures.reset(next(iter(keys)))
        await self._audit.record("login", user_id=user.id)
        return issued

    async def refresh(self, refresh_token: str) -> IssuedTokens:
        """Rotate a refresh token; a spent one revokes the whole session (reuse detection).

        Except within ``refresh_reuse`` of its rotation: the token just spent is
        answered with the very pair it was traded for (two tabs refreshing at once, a
        client retrying after a timeout), re-signed from the claims the session row
        keeps. Which request rotates is decided by one conditional UPDATE, so on any
        number of nodes one wins and the others replay its answer. A session whose
        organisation no longer allows the way it signed in ends here too.
        """
        claims = self._codec.decode(refresh_token, expected="refresh")
        rotation = await self._accounts.rotate_refresh(
            claims.session_id, claims.user_id, claims.jti, clock=self._clock,
            judge=lambda seen: self._judge(seen, claims),
        )  # fmt: skip
        if rotation.outcome in ("reused", "refused"):
            await self._revoked(claims.session_id, ENDED)
            if rotation.outcome == "refused":
                raise SessionRevokedError(
                    "your organisation no longer allows this way of signing in; sign in again"
                )
            await self._audit.record(
                "refresh_reuse", user_id=claims.user_id, session_id=claims.session_id
            )
            raise RefreshReuseError("this refresh token was already used; the session is revoked")
        assert rotation.user is not None
        assert rotation.issued_at is not None
        await self._audit.record(
            "refresh", user_id=rotation.user.id, session_id=claims.session_id,
            **({"replayed": True} if rotation.outcome == "replayed" else {}),
        )  # fmt: skip
        return self._tokens(
            rotation.user, claims.session_id, rotation.refresh_jti,
            access_jti=rotation.access_jti, issued_at=rotation.issued_at,
        )  # fmt: skip

    def _judge(self, seen: RefreshSeen, claims: TokenClaims) -> tuple[str | None, _Rotation]:
        """The rules of ``refresh``, inside its transaction: rotate, replay, or revoke the
        session (the reason to revoke it, and what happened)."""
        row, user, now = seen.row, seen.user, seen.at
        if row is None or row.user_id != claims.user_id:
            raise AuthenticationError("the token is invalid")
        if row.revoked_at is not None:
            raise SessionRevokedError("this session has ended; log in again")
        assert user is not None
        if seen.won:
            reason = seen.refusal()
            if reason is not None:
                return reason, _Rotation("refused")
            return None, _Rotation("rotated", user, seen.refresh_jti, seen.access_jti, now)
        if (
            row.previous_refresh_jti == claims.jti
            and row.rotated_at is not None
            and row.access_jti is not None
            and now - row.rotated_at < self.refresh_reuse
        ):
            return None, _Rotation(
                "replayed", user, row.refresh_jti, row.access_jti, row.rotated_at
            )
        return "refresh_reuse", _Rotation("reused")

    async def logout(self, principal: Principal) -> None:
        """End the session: its access and refresh tokens stop working at once."""
        await self._accounts.revoke_session(principal.session_id, "logout")
        await self._revoked(principal.session_id, ENDED)
        await self._audit.record(
            "logout", user_id=principal.user_id, session_id=principal.session_id
        )

    async def revoke_all(self, user_id: str, reason: str) -> int:
        """End every session and API key of ``user_id`` (removed from their organisation,
        …), in one transaction; how many ended. A key revoked here stays revoked."""
        ended = await self._accounts.revoke_all_of(user_id, reason)
        for session_id in ended:
            await self._revoked(session_id, reason)
        return len(ended)

    async def forget(self, session_id: str, reason: str = ENDED) -> None:
        """A session (or API key) ended elsewhere (a policy change, a revoked key): drop it
        here, end what is open with it here, and tell the other processes."""
        await self._revoked(session_id, reason)

    async def _revoked(self, session_id: str, reason: str) -> None:
        """Forget a revoked session here at once, and announce it (``RevocationNotifier``:
        what is open with it here ends at once, and on the other processes)."""
        self.sessions.invalidate(session_id)
        if self._revocations is not None:
            try:
                await self._revocations.publish(session_id, reason)
            except Exception:
                logger.warning(
                    "could not announce a revoked session to the other processes; they "
                    "refuse it within %gs (their session cache's lifetime) and end its "
                    "sockets and streams at their next session check",
                    self.sessions.ttl,
                )

    def credential_of(self, token: str | None) -> Credential:
        """The first half of the one validation: what ``token`` names, if it is genuine
        (an access token's signature and claims; an API key's shape and digest)."""
        if not token:
            raise AuthenticationError("authentication required")
        key_id = key_id_of(token)
        if key_id is not None:
            return Credential(key_id, None, key_digest(token))
        claims = self._codec.decode(token, expected="access")
        return Credential(claims.session_id, claims.user_id)

    async def authenticate(self, token: str | None) -> Principal:
        """The one token validation: signature, claims, then a live session (or key) and user.

        ``principal_for(credential_of(token))``: a socket keeps the credential it
        opened with and asks ``principal_for`` again for every frame that starts
        work, so a request and a frame are judged by the same rule, with the same plan.
        """
        return await self.principal_for(self.credential_of(token))

    async def principal_for(self, credential: Credential) -> Principal:
        """The second half of the one validation: the credential's session (or key) and
        user as they are now — ``SessionRevokedError`` once it ended.

        The session and user come from the session cache when they were read in the
        last few seconds and not revoked since (``atoll.auth.sessions``); a key is read
        every time.
        """
        if credential.key_digest is not None:
            return await self._key_principal(credential.session_id, credential.key_digest)
        cached = self.sessions.get(credential.session_id)
        if cached is not None:
            if cached.user_id != credential.user_id:
                raise AuthenticationError("the token is invalid")
            return cached
        epoch = self.sessions.epoch  # before the read: see atoll.auth.sessions
        found = await self._accounts.principal_rows(credential.session_id)
        if found is None:
            raise AuthenticationError("the token is invalid")
        row = found.credential
        if row.user_id != credential.user_id:
            raise AuthenticationError("the token is invalid")
        if not session_live(row):
            raise SessionRevokedError(
                "this session has ended; log in again", reason=row.revoked_reason
            )
        principal = principal_of(found)
        self.sessions.put(principal, epoch=epoch)
        return principal

    async def _key_principal(self, key_id: str, digest: str) -> Principal:
        """An API key's principal: read on every request (revocation is at once)."""
        found = await self._accounts.key_principal_rows(key_id)
        if found is None or not hmac.compare_digest(found.credential.key_hash, digest):
            raise AuthenticationError("the token is invalid")
        if not usable(found.credential, utcnow()):
            raise SessionRevokedError("this API key is revoked or expired")
        return principal_of(found, frozenset(found.credential.scopes or ()))

    async def ended(self, principals: Collection[Principal]) -> dict[str, str]:
        """Which of these principals' sessions and keys no longer authenticate anyone, read
        from the database now (not the cache), each with the reason it ended.

        The same rules as ``principal_for`` (``session_live``, ``usable``), for many at
        once: what a server checks, every few tenths of a second, of the sessions its
        sockets and streams were opened with, to learn of endings made by another process
        (``atoll org remove`` beside a single ``atoll serve``) or behind Atoll's back.
        """
        keys = [p.session_id for p in principals if p.scopes is not None]
        sessions = [p.session_id for p in principals if p.scopes is None]
        ended: dict[str, str] = {}
        now = utcnow()
        found = await self._accounts.credentials(sessions, keys)
        for session_id in sessions:
            row = found.sessions.get(session_id)
            if row is None or not session_live(row):
                ended[session_id] = (row.revoked_reason if row else None) or ENDED
        for key_id in keys:
            key = found.keys.get(key_id)
            if key is None or not usable(key, now):
                ended[key_id] = ENDED
        return ended

    async def session_for(self, user: User, provider: str | None) -> IssuedTokens:
        """Start a session for ``user``, who proved who they are through ``provider`` (a
        sign-in; None: a password checked elsewhere)."""
        return await self._start_session(user, provider=provider)

    async def _start_session(
        self, user: User, *, provider: str | None = None, device: bool = False
    ) -> IssuedTokens:
        """A new session, if the organisations governing ``user`` allow the way they came
        in (checked in the same transaction that stores it); ``device``: with a device
        cookie for the client (a password login)."""
        now = self._clock()
        row = AuthSession(
            id=new_id("ses"),
            user_id=user.id,
            refresh_jti=new_id("ses"),
            provider=provider,
            created_at=now,
            expires_at=now + timedelta(seconds=self._codec.refresh_ttl),
        )
        await self._accounts.start_session(row, emails=[user.email], refuse=refuse)
        issued = self._tokens(
            user, row.id, row.refresh_jti, access_jti=new_id("req"), issued_at=now
        )
        if not device:
            return issued
        return dataclasses.replace(issued, device_cookie=self.devices.issue(user.email))

    def _tokens(
        self, user: User, session_id: str, refresh_jti: str, *, access_jti: str,
        issued_at: datetime,
    ) -> IssuedTokens:  # fmt: skip
        """The pair of one rotation: the same arguments always give the same tokens."""
        iat = int(issued_at.timestamp())
        access = self._codec.issue(
            user_id=user.id, session_id=session_id, type="access", jti=access_jti, issued_at=iat
        )
        refresh = self._codec.issue(
            user_id=user.id, session_id=session_id, type="refresh", jti=refresh_jti, issued_at=iat
        )
        remaining = iat + int(self._codec.access_ttl) - int(self._clock().timestamp())
        return IssuedTokens(user, access, refresh, max(0, remaining))


def refuse(reason: str) -> NoReturn:
    """Raise what a sign-in refused by an organisation's policy answers: 403 ``sso_required``
    for a password, 401 ``sign_in_failed`` (``provider_not_allowed``) for a provider."""
    if reason == SSO_REFUSAL:
        raise SSORequiredError(SSO_REQUIRED)
    raise SignInError(reason, "your organisation does not sign in through this provider")
