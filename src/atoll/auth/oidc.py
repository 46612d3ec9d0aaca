"""One OpenID Provider: discovery, the authorization URL (code flow, PKCE S256, state,
nonce), the code exchange, and the ID token's verification.

The ID token is verified here, never trusted as sent: its signature against the
provider's JWKS (refetched once when a token names a key it does not know — key
rotation — and at most every ``JWKS_MIN_REFRESH`` seconds, so tokens with made-up
key ids cannot make Atoll hammer the provider), an asymmetric algorithm (``none``
and HMAC are refused), ``iss`` exactly the configured issuer, ``aud`` containing the
client id (with ``azp`` when there are several audiences), ``exp`` and ``iat``
within a minute of skew, and ``nonce`` equal to the one this sign-in sent. Email
claims missing from the ID token are read from the userinfo endpoint, whose ``sub``
must be the token's. The issuer and every endpoint are https:// (plain HTTP only on
loopback or with the provider's explicit ``allow_insecure_http``: see ``config``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from atoll.config import OIDCProviderSettings
from atoll.errors import SignInError

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA"]  # fmt: skip
"""Asymmetric only: ``none`` and HMAC (whose key would be the client secret) are refused."""
LEEWAY = 60
"""Seconds of clock skew allowed on ``exp`` and ``iat``."""
ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint")
"""The discovery document's URLs Atoll uses."""
METADATA_TTL = 3600.0
JWKS_MIN_REFRESH = 30.0
HTTP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ProviderIdentity:
    """Who the provider says signed in (from a verified ID token and userinfo)."""

    issuer: str
    subject: str
    email: str | None
    email_verified: bool
    name: str | None


class OIDCProvider:
    """A configured provider; built once per app (see ``SignInService``)."""

    def __init__(
        self,
        settings: OIDCProviderSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._transport = transport
        self._clock = clock
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0

    def _http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=HTTP_TIMEOUT, transport=self._transport)

    def _oauth(self, redirect_uri: str) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.settings.client_id,
            client_secret=self.settings.client_secret.get_secret_value(),
            scope=self.settings.scopes,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=HTTP_TIMEOUT,
            transport=self._transport,
        )

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (cached for an hour)."""
        if self._metadata is None or self._clock() - self._metadata_at > METADATA_TTL:
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                async with self._http() as http:
                    answer = await http.get(url)
                    answer.raise_for_status()
                    document = answer.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise SignInError("provider_unavailable", f"{self.name}: discovery failed") from exc
            if not isinstance(document, dict) or document.get("issuer") != self.settings.issuer:
                raise SignInError("provider_unavailable", f"{self.name}: issuer mismatch")
            self._check_endpoints(document)
            self._metadata, self._metadata_at = document, self._clock()
        return self._metadata

    def _check_endpoints(self, document: dict[str, Any]) -> None:
        """The endpoints Atoll calls (or sends the browser to) must be https:// like the
        issuer: a discovery document naming plain http:// ones (a JWKS anyone on the path
        could swap) is refused, unless this provider may use plain HTTP at all."""
        if self.settings.plain_http_allowed():
            return
        for field in ENDPOINTS:
            value = document.get(field)
            if value is not None and not (isinstance(value, str) and value.startswith("https://")):
                raise SignInError(
                    "provider_unavailable", f"{self.name}: {field} is not an https:// URL"
                )

    async def keys(self, *, refresh: bool = False) -> KeySet:
        """The provider's signing keys (refetched when asked, at most every 30 s)."""
        stale = self._keys is None or (refresh and self._clock() - self._keys_at > JWKS_MIN_REFRESH)
        if stale:
            metadata = await self.metadata()
            try:
                async with self._http() as http:
                    answer = await http.get(str(metadata["jwks_uri"]))
                    answer.raise_for_status()
                    self._keys = KeySet.import_key_set(answer.json())
            except (httpx.HTTPError, ValueError, KeyError, JoseError) as exc:
                raise SignInError("provider_unavailable", f"{self.name}: no signing keys") from exc
            self._keys_at = self._clock()
        assert self._keys is not None
        return self._keys

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, verifier: str
    ) -> str:
        """Where to send the browser: the code flow with PKCE (S256), state and nonce."""
        metadata = await self.metadata()
        async with self._oauth(redirect_uri) as client:
            url, _ = client.create_authorization_url(
                metadata["authorization_endpoint"], state=state, nonce=nonce, code_verifier=verifier
            )
        return str(url)

    async def finish(
        self, *, code: str, redirect_uri: str, verifier: str, nonce: str
    ) -> ProviderIdentity:
        """Trade the callback's code (with the PKCE verifier) and verify what comes back."""
        metadata = await self.metadata()
        try:
            async with self._oauth(redirect_uri) as client:
                token = await client.fetch_token(
                    metadata["token_endpoint"], code=code, code_verifier=verifier
                )
        except Exception as exc:  # authlib raises its own errors and httpx's
            raise SignInError("code_rejected", f"{self.name} refused the code") from exc
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise SignInError("invalid_id_token", "the provider sent no ID token")
        claims = await self.verify(id_token, nonce=nonce)
        if "email" not in claims and metadata.get("userinfo_endpoint"):
            claims = {**await self._userinfo(metadata, token, claims["sub"]), **claims}
        email = claims.get("email")
        return ProviderIdentity(
            issuer=self.settings.issuer,
            subject=str(claims["sub"]),
            email=email if isinstance(email, str) else None,
            email_verified=claims.get("email_verified") is True,
            name=claims.get("name") if isinstance(claims.get("name"), str) else None,
        )

    async def verify(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        """The claims of a valid ID token for this client and sign-in; else ``SignInError``."""
        try:
            try:
                token = jwt.decode(id_token, await self.keys(), algorithms=ALGORITHMS)
            except InvalidKeyIdError:  # a key we do not have yet: the provider rotated
                token = jwt.decode(id_token, await self.keys(refresh=True), algorithms=ALGORITHMS)
            claims = dict(token.claims)
            jwt.JWTClaimsRegistry(
                now=int(self._clock()),
                leeway=LEEWAY,
                iss={"essential": True, "value": self.settings.issuer},
                aud={"essential": True, "value": self.settings.client_id},
                sub={"essential": True},
                exp={"essential": True},
                iat={"essential": True},
                nonce={"essential": True, "value": nonce},
            ).validate(claims)
        except (JoseError, ValueError, TypeError) as exc:
            raise SignInError("invalid_id_token", f"the ID token was refused: {exc}") from exc
        audience = claims["aud"]
        if (
            isinstance(audience, list)
            and len(audience) > 1
            and (claims.get("azp") != self.settings.client_id)
        ):
            raise SignInError("invalid_id_token", "the ID token is for another client (azp)")
        if not isinstance(claims["iat"], int | float) or claims["iat"] > self._clock() + LEEWAY:
            raise SignInError("invalid_id_token", "the ID token was issued in the future")
        return claims

    async def _userinfo(
        self, metadata: dict[str, Any], token: dict[str, Any], subject: str
    ) -> dict[str, Any]:
        try:
            async with self._http() as http:
                answer = await http.get(
                    metadata["userinfo_endpoint"],
                    headers={"Authorization": f"Bearer {token['access_token']}"},
                )
                answer.raise_for_status()
                info = answer.json()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise SignInError("provider_unavailable", f"{self.name}: userinfo failed") from exc
        if not isinstance(info, dict) or info.get("sub") != subject:
            raise SignInError("invalid_id_token", "userinfo is about another subject")
        return {k: info[k] for k in ("email", "email_verified", "name") if k in info}
