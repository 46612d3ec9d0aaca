"""ID tokens Atoll must refuse, from a provider that signs whatever the test asks.

The provider here is a small Starlette app (discovery and JWKS) reached through httpx's
ASGI transport; the tokens are made with joserfc. Each refusal is its own test."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from atoll.auth.oidc import OIDCProvider
from atoll.config import OIDCProviderSettings
from atoll.errors import SignInError

pytestmark = [pytest.mark.integration, pytest.mark.security]
ISSUER = "https://id.example.test"
CLIENT = "atoll"
NONCE = "the-nonce-of-this-sign-in"


class HostileProvider:
    """Serves discovery and a JWKS that the test can rotate; counts JWKS fetches."""

    def __init__(self) -> None:
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "k1"})]
        self.jwks_fetches = 0

    async def discovery(self, request: Request) -> JSONResponse:
        return JSONResponse({
            "issuer": ISSUER, "jwks_uri": f"{ISSUER}/jwks",
            "authorization_endpoint": f"{ISSUER}/auth", "token_endpoint": f"{ISSUER}/token",
        })  # fmt: skip

    async def jwks(self, request: Request) -> JSONResponse:
        self.jwks_fetches += 1
        return JSONResponse(KeySet(self.keys).as_dict(private=False))

    def transport(self) -> httpx.ASGITransport:
        app = Starlette(routes=[
            Route("/.well-known/openid-configuration", self.discovery),
            Route("/jwks", self.jwks),
        ])  # fmt: skip
        return httpx.ASGITransport(app=app)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": CLIENT, "sub": "user-1", "iat": now, "exp": now + 300,
            "nonce": NONCE, "email": "ada@example.com", "email_verified": True}  # fmt: skip
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def signed(key: RSAKey | OctKey, body: dict[str, Any], alg: str = "RS256") -> str:
    return jwt.encode({"alg": alg, "kid": key.kid}, body, key)


@pytest.fixture
def provider() -> HostileProvider:
    return HostileProvider()


@pytest.fixture
def atoll(provider: HostileProvider) -> Callable[..., OIDCProvider]:
    def make(clock: Callable[[], float] = time.time) -> OIDCProvider:
        settings = OIDCProviderSettings(
            name="hostile", display_name="Hostile", issuer=ISSUER, client_id=CLIENT,
            client_secret=SecretStr("the-client-secret"),
        )  # fmt: skip
        return OIDCProvider(settings, transport=provider.transport(), clock=clock)

    return make


async def refused(oidc: OIDCProvider, token: str, nonce: str = NONCE) -> str:
    with pytest.raises(SignInError) as error:
        await oidc.verify(token, nonce=nonce)
    assert error.value.reason == "invalid_id_token"
    return str(error.value)


async def test_a_good_token_is_accepted(
    provider: HostileProvider, atoll: Callable[..., Any]
) -> None:
    verified = await atoll().verify(signed(provider.keys[0], claims()), nonce=NONCE)
    assert (verified["sub"], verified["email"]) == ("user-1", "ada@example.com")


async def test_wrong_issuer(provider: HostileProvider, atoll: Callable[..., Any]) -> None:
    await refused(atoll(), signed(provider.keys[0], claims(iss="https://evil.example")))


async def test_wrong_audience(provider: HostileProvider, atoll: Callable[..., Any]) -> None:
    await refused(atoll(), signed(provider.keys[0], claims(aud="another-client")))


async def test_several_audiences_need_azp_to_be_us(
    provider: HostileProvider, atoll: Callable[..., Any]
) -> None:
    several = claims(aud=[CLIENT, "another-client"])
    await refused(atoll(), signed(provider.keys[0], several))
    await refused(atoll(), signed(provider.keys[0], {**several, "azp": "another-client"}))
    assert await atoll().verify(signed(provider.keys[0], {**several, "azp": CLIENT}), nonce=NONCE)


async def test_expired(provider: HostileProvider, atoll: Callable[..., Any]) -> None:
    now = int(time.time())
    await refused(atoll(), signed(provider.keys[0], claims(iat=now - 3600, exp=now - 120)))


async def test_issued_in_the_future(provider: HostileProvider, atoll: Callable[..., Any]) -> None:
    now = int(time.time())
    await refused(atoll(), signed(provider.keys[0], claims(iat=now + 3600, exp=now + 7200)))


async def test_missing_claims(provider: HostileProvider, atoll: Callable[..., Any]) -> None:
    for missing in ("sub", "exp", "iat", "nonce"):
        await refused(atoll(), signed(provider.keys[0], claims(**{missing: None})))


async def test_a_replayed_or_foreign_nonce(
    provider: HostileProvider, atoll: Callable[..., Any]
) -> None:
    token = signed(provider.keys[0], claims())
    await refused(atoll(), token, nonce="the-nonce-of-another-sign-in")


async def test_alg_none(provider: HostileProvider, atoll: Callable[..., Any]) -> None:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    for header in ({"alg": "none"}, {"alg": "none", "kid": "k1"}, {"alg": "None"}):
        await refused(atoll(), f"{part(header)}.{part(claims())}.")


async def test_hmac_with_the_client_secret(
    provider: HostileProvider, atoll: Callable[..., Any]
) -> None:
    secret = OctKey.import_key("the-client-secret", parameters={"kid": "k1"})
    await refused(atoll(), signed(secret, claims(), alg="HS256"))


async def test_signed_by_another_key(provider: HostileProvider, atoll: Callable[..., Any]) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # same kid, other key
    await refused(atoll(), signed(stranger, claims()))
    unknown = RSAKey.generate_key(2048, parameters={"kid": "not-published"})
    await refused(atoll(), signed(unknown, claims()))


async def test_a_rotated_key_is_fetched_once_and_made_up_kids_cannot_flood_the_provider(
    provider: HostileProvider, atoll: Callable[..., Any]
) -> None:
    now = [time.time()]
    oidc = atoll(clock=lambda: now[0])
    assert await oidc.verify(signed(provider.keys[0], claims()), nonce=NONCE)
    assert provider.jwks_fetches == 1
    rotated = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    provider.keys = [rotated]
    now[0] += 60  # later than the minimum interval between refetches
    assert await oidc.verify(
        signed(rotated, claims(iat=int(now[0]), exp=int(now[0]) + 300)), nonce=NONCE
    )
    assert provider.jwks_fetches == 2
    for index in range(20):  # tokens naming keys nobody published
        made_up = RSAKey.generate_key(2048, parameters={"kid": f"x{index}"})
        await refused(oidc, signed(made_up, claims(iat=int(now[0]), exp=int(now[0]) + 300)))
    assert provider.jwks_fetches == 2  # within 30 s of the last refetch: none


async def test_a_provider_whose_discovery_names_another_issuer_is_refused(
    provider: HostileProvider, atoll: Callable[..., Any]
) -> None:
    async def lying(request: Request) -> JSONResponse:
        return JSONResponse({"issuer": "https://evil.example", "jwks_uri": f"{ISSUER}/jwks"})

    provider.discovery = lying  # type: ignore[method-assign]
    with pytest.raises(SignInError) as error:
        await atoll().verify(signed(provider.keys[0], claims()), nonce=NONCE)
    assert error.value.reason == "provider_unavailable"


async def test_a_discovery_naming_plain_http_endpoints_is_refused(
    provider: HostileProvider, atoll: Callable[..., Any]
) -> None:
    """An https:// issuer whose discovery sends Atoll to a plain http:// JWKS (keys anyone
    on the path could swap) or token endpoint is refused."""
    for field, url in (("jwks_uri", "http://id.example.test/jwks"),
                       ("token_endpoint", "http://id.example.test/token")):  # fmt: skip

        async def downgraded(request: Request, field: str = field, url: str = url) -> JSONResponse:
            return JSONResponse({
                "issuer": ISSUER, "jwks_uri": f"{ISSUER}/jwks",
                "authorization_endpoint": f"{ISSUER}/auth", "token_endpoint": f"{ISSUER}/token",
                field: url,
            })  # fmt: skip

        provider.discovery = downgraded  # type: ignore[method-assign]
        with pytest.raises(SignInError) as error:
            await atoll().verify(signed(provider.keys[0], claims()), nonce=NONCE)
        assert error.value.reason == "provider_unavailable"
        assert field in str(error.value)


@pytest.mark.parametrize(
    ("issuer", "allowed"),
    [
        ("https://id.example.test", True),
        ("http://127.0.0.1:9000", True),
        ("http://127.1.2.3", True),
        ("http://localhost:8080/realms/x", True),
        ("http://[::1]:8080", True),
        ("http://id.example.test", False),
        ("http://10.0.0.5", False),
        ("http://localhost.evil.example", False),
        ("http://127.0.0.1.evil.example", False),
        ("http://[::ffff:8.8.8.8]", False),
    ],
)
def test_plain_http_issuers_only_on_loopback(issuer: str, allowed: bool) -> None:
    def settings(**extra: Any) -> OIDCProviderSettings:
        return OIDCProviderSettings(
            name="corp", display_name="Corp", issuer=issuer, client_id=CLIENT,
            client_secret=SecretStr("s"), **extra,
        )  # fmt: skip

    if allowed:
        assert settings().plain_http_allowed() or issuer.startswith("https://")
    else:
        with pytest.raises(ValueError, match=r"'corp'.*plain http://"):
            settings()
        assert settings(allow_insecure_http=True).plain_http_allowed()
