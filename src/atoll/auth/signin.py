"""Signing in with an OpenID Provider: from the redirect to Atoll tokens.

1. ``start``: a random ``state``, ``nonce`` and PKCE verifier are stored (by the hash
   of the state) with where to return, and bound to the browser by an HttpOnly
   cookie; the browser goes to the provider.
2. ``callback``: the state is spent (once, within 10 minutes, only by the browser
   that started it — login CSRF fails), the code is traded with the verifier, the ID
   token verified (``atoll.auth.oidc``), and the account found or made: by the
   provider's issuer and subject; a first sign-in creates the user only with a
   verified email; an existing password account with that email is linked only if
   the provider allows linking. A verified email in an organisation's domain joins
   that organisation. The browser returns to the page with a **one-time code** in
   the URL fragment (never sent to a server, removed by the page at once).
3. ``exchange``: the page posts the code (single use, 60 s, same browser) and gets
   the usual token pair. Tokens never travel in a URL.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from atoll.auth.oidc import OIDCProvider, ProviderIdentity
from atoll.auth.service import AuthService, IssuedTokens, refuse
from atoll.errors import LastSignInError, NotFoundError, SignInError
from atoll.runtime.ids import new_id
from atoll.store.audit import AuditLog
from atoll.store.db import Database
from atoll.store.identities import IdentityStore, SignInRecords
from atoll.store.models import Identity, LoginCode, OIDCLogin, OrgMember, User, utcnow

LOGIN_TTL = timedelta(minutes=10)
"""How long a started sign-in may take at the provider."""
CODE_TTL = timedelta(seconds=60)
"""How long the page has to trade its one-time code."""
UNUSABLE_PASSWORD = "!sso"  # noqa: S105 - a marker no password hash can equal
"""The password hash of an account made by a sign-in: no password matches it."""
MAX_NEXT = 2000


def digest(secret: str) -> str:
    """What is stored of a secret (state, code, browser binding): its SHA-256."""
    return hashlib.sha256(secret.encode()).hexdigest()


def safe_next(target: str | None, allowed_origins: list[str]) -> str:
    """Where a sign-in may return: a path of this server, or a URL on one of
    ``allowed_origins``; anything else (``//evil``, ``https://evil``, ``/\\evil``,
    ``javascript:``) returns to ``/``."""
    if not target or len(target) > MAX_NEXT or any(ord(c) < 0x20 or c == "\\" for c in target):
        return "/"
    if target.startswith("/") and not target.startswith("//"):
        return target
    parts = urlsplit(target)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    if parts.scheme in ("http", "https") and origin in {
        o.rstrip("/").lower() for o in allowed_origins
    }:
        return target
    return "/"


class SignInService:
    """The configured providers and the sign-in flow (one per app)."""

    def __init__(
        self,
        db: Database,
        auth: AuthService,
        audit: AuditLog,
        providers: list[OIDCProvider],
        *,
        redirect_origins: list[str],
    ) -> None:
        self._identities = IdentityStore(db)
        self._auth = auth
        self._audit = audit
        self.providers = {provider.name: provider for provider in providers}
        self._redirect_origins = redirect_origins

    def provider(self, name: str) -> OIDCProvider:
        """The provider ``name``; ``NotFoundError`` for one that is not configured."""
        found = self.providers.get(name)
        if found is None:
            raise NotFoundError("no such sign-in provider")
        return found

    async def start(
        self, name: str, *, redirect_uri: str, next_url: str | None, link_user_id: str | None = None
    ) -> tuple[str, str]:
        """Begin a sign-in: the provider URL to redirect to, and the browser's secret."""
        provider = self.provider(name)
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier, browser = secrets.token_urlsafe(48), secrets.token_urlsafe(32)
        try:
            url = await provider.authorization_url(
                redirect_uri=redirect_uri, state=state, nonce=nonce, verifier=verifier
            )
        except SignInError as exc:
            await self._audit.record("sign_in_failed", provider=name, reason=exc.reason)
            raise
        row = OIDCLogin(
            state_hash=digest(state),
            provider=name,
            nonce=nonce,
            verifier=verifier,
            next_path=safe_next(next_url, self._redirect_origins),
            browser_hash=digest(browser),
            link_user_id=link_user_id,
            created_at=utcnow(),
        )
        await self._identities.begin(row, ttl=LOGIN_TTL)
        return url, browser

    async def callback(
        self, name: str, *, code: str | None, state: str | None, browser: str | None,
        redirect_uri: str, error: str | None = None, address: str | None = None,
    ) -> tuple[str, str]:  # fmt: skip
        """Finish at the provider's redirect: where to go and the one-time code. ``error``:
        the provider's own refusal; ``address``: the client's, for the audit log.

        Every refusal is audited here (``sign_in_failed``), with who was tried as far as
        the provider vouched for it: its issuer, subject and email once the ID token was
        verified (an unverified token's claims are not recorded: anyone can write them).
        """
        provider = self.provider(name)
        identity: ProviderIdentity | None = None
        try:
            if error is not None:
                raise SignInError("provider_refused", "the provider did not sign you in")
            if not code or not state or not browser:
                raise SignInError("state_invalid", "the sign-in did not start in this browser")
            login = await self._spend_state(name, state, browser)
            identity = await provider.finish(
                code=code, redirect_uri=redirect_uri, verifier=login.verifier, nonce=login.nonce
            )
            user = await self._account(provider, identity, login.link_user_id)
        except SignInError as exc:
            tried = (
                {"issuer": identity.issuer, "subject": identity.subject, "email": identity.email}
                if identity is not None
                else {}
            )
            await self._audit.record(
                "sign_in_failed", provider=name, reason=exc.reason, address=address, **tried
            )
            raise
        one_time = secrets.token_urlsafe(32)
        row = LoginCode(
            code_hash=digest(one_time), user_id=user.id, provider=name,
            browser_hash=digest(browser), created_at=utcnow(),
        )  # fmt: skip
        await self._identities.add_code(row)
        return login.next_path, one_time

    async def _spend_state(self, name: str, state: str, browser: str) -> OIDCLogin:
        """The sign-in started with ``state`` by this browser, spent now (once)."""
        login = await self._identities.spend_state(
            digest(state), name, digest(browser), ttl=LOGIN_TTL
        )
        if login is None:
            raise SignInError("state_invalid", "this sign-in is unknown, used or expired")
        return login

    async def _account(
        self, provider: OIDCProvider, identity: ProviderIdentity, link_user_id: str | None
    ) -> User:
        """The user the identity signs in (found, linked or made), joined to its org."""
        events: list[tuple[str, dict[str, str]]] = []

        def resolve(records: SignInRecords) -> User:
            found = records.identity(identity.issuer, identity.subject)
            now = utcnow()
            if found is not None:
                if link_user_id is not None and found.user_id != link_user_id:
                    raise SignInError("identity_taken", "this identity belongs to another account")
                records.touch(found, email=identity.email, at=now)
                user = records.user(found.user_id)
                assert user is not None
            else:
                user = self._user_for(records, provider, identity, link_user_id, events)
                records.add_identity(
                    Identity(
                        user_id=user.id, provider=provider.name, issuer=identity.issuer,
                        subject=identity.subject, email=identity.email, created_at=now,
                        last_used_at=now,
                    )
                )  # fmt: skip
            member = records.member(user.id)
            if member is not None and member.removed_at is not None:
                raise SignInError(
                    "removed_from_org", "your organisation removed you; ask its admin"
                )
            vouched = [identity.email] if identity.email and identity.email_verified else []
            reason = records.refusal(user.id, [user.email, *vouched], provider.name)
            if reason is not None:  # an organisation bound to other providers
                refuse(reason)
            if member is None and identity.email and identity.email_verified:
                org = records.org_of_domain(identity.email)
                if org is not None:
                    records.add_member(
                        OrgMember(user_id=user.id, org_id=org.id, role="member", joined_at=now)
                    )
                    events.append(("org_joined", {"org_id": org.id}))
            return user

        user = await self._identities.resolve(resolve)
        for action, detail in events:
            await self._audit.record(action, user_id=user.id, provider=provider.name, **detail)
        await self._audit.record("sign_in", user_id=user.id, provider=provider.name)
        return user

    def _user_for(
        self,
        records: SignInRecords,
        provider: OIDCProvider,
        identity: ProviderIdentity,
        link_user_id: str | None,
        events: list[tuple[str, dict[str, str]]],
    ) -> User:
        if link_user_id is not None:  # a signed-in user links this provider to their account
            user = records.user(link_user_id)
            if user is None:
                raise SignInError("state_invalid", "the account to link is gone")
            events.append(("identity_linked", {"subject": identity.subject}))
            return user
        if not identity.email or not identity.email_verified:
            raise SignInError("email_unverified", "the provider did not assert a verified email")
        email = identity.email.strip().lower()
        existing = records.user_by_email(email)
        if existing is not None:
            if not provider.settings.allow_linking:
                raise SignInError(
                    "account_exists",
                    "an account with this email exists: log in with its password and link "
                    "the provider from your account",
                )
            events.append(("identity_linked", {"subject": identity.subject}))
            return existing
        user = User(
            id=new_id("usr"), email=email, name=identity.name, password_hash=UNUSABLE_PASSWORD,
            plan=self._auth.default_plan, roles=[], created_at=utcnow(),
        )  # fmt: skip
        records.add_user(user)
        events.append(("register", {"via": provider.name}))
        return user

    async def exchange(self, code: str, browser: str | None) -> IssuedTokens:
        """Trade the one-time code of a finished sign-in for tokens (once, same browser)."""
        if not browser:
            raise SignInError("code_invalid", "this code is unknown, used or expired")

        found = await self._identities.spend_code(digest(code), digest(browser), ttl=CODE_TTL)
        if found is None:
            raise SignInError("code_invalid", "this code is unknown, used or expired")
        user, provider = found
        return await self._auth.session_for(user, provider)

    async def identities(self, user_id: str) -> list[Identity]:
        """The provider accounts linked to ``user_id``'s, oldest first."""
        return await self._identities.of_user(user_id)

    async def unlink(self, user_id: str, identity_pk: int) -> None:
        """Remove one of the user's linked identities (never their last way to sign in)."""

        def keep_a_way_in(user: User | None, others: bool) -> None:
            if user is not None and user.password_hash.startswith("!") and not others:
                raise LastSignInError("this is the only way to sign in to this account")

        provider = await self._identities.unlink(user_id, identity_pk, check=keep_a_way_in)
        await self._audit.record("identity_unlinked", user_id=user_id, provider=provider)
