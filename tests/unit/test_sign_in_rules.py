"""The rules a sign-in is held to that need no provider: where it may return, which
email addresses belong to an organisation's domain, what an organisation's policy lets
in, and device cookies."""

from __future__ import annotations

import pytest

from atoll.auth.devices import DeviceCookies
from atoll.auth.signin import safe_next
from atoll.store.orgs import (
    PROVIDER_NOT_ALLOWED,
    SSO_REQUIRED,
    SignInPolicy,
    email_domain,
    normalise_domain,
)

pytestmark = [pytest.mark.unit, pytest.mark.security]


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/", "//evil.example/x", "/\\evil.example", "\\\\evil.example",
        "javascript:alert(1)", "https:evil.example", "http://127.0.0.1.evil.example/",
        "/t/x\r\nSet-Cookie: a=b", "https://atoll.example.com.evil.io/", "data:text/html,x",
        "/" + "x" * 2000, "", None,
    ],
)  # fmt: skip
def test_a_sign_in_never_returns_to_another_site(target: str | None) -> None:
    assert safe_next(target, ["https://atoll.example.com"]) == "/"


@pytest.mark.parametrize(
    "target", ["/", "/t/thr_abc-DEF_123", "/?q=1", "https://atoll.example.com/t/thr_x"]
)
def test_a_sign_in_returns_to_this_server_or_an_allowed_origin(target: str) -> None:
    assert safe_next(target, ["https://atoll.example.com/"]) == target


@pytest.mark.parametrize(
    ("email", "domain"),
    [
        ("ada@example.com", "example.com"),
        ("Ada@EXAMPLE.COM", "example.com"),  # upper case is the same domain
        ("ada@example.com.", "example.com"),  # a trailing dot too
        ("a@b@example.com", "example.com"),  # the part after the last @
        ("ada@bücher.example", "xn--bcher-kva.example"),  # IDNA
    ],
)
def test_the_domain_of_an_email(email: str, domain: str) -> None:
    assert email_domain(email) == domain


@pytest.mark.parametrize(
    "email",
    [
        "ada@example.com.evil.io",  # a look-alike ending in the domain's name
        "ada@evil-example.com",  # a look-alike starting before it
        "ada@sub.example.com",  # a subdomain is another domain
        "ada@exаmple.com",  # a Cyrillic а: a homograph, another domain once IDNA-encoded
        "ada@examp1e.com",
        "ada@example.co",
    ],
)
def test_look_alike_domains_are_other_domains(email: str) -> None:
    assert email_domain(email) != "example.com"


@pytest.mark.parametrize("domain", ["", "localhost", "a b.com", "x@y.com", "a/b.com", "." * 3])
def test_what_is_not_a_domain(domain: str) -> None:
    assert normalise_domain(domain) is None


@pytest.mark.parametrize(
    ("sso_required", "bound", "provider", "refusal"),
    [
        (False, set(), None, None),
        (True, set(), None, SSO_REQUIRED),
        (True, set(), "any", None),
        (True, {"acme"}, "acme", None),
        (True, {"acme"}, "social", PROVIDER_NOT_ALLOWED),
        (False, {"acme"}, "social", PROVIDER_NOT_ALLOWED),
        (False, {"acme"}, None, None),
    ],
)  # fmt: skip
def test_what_an_organisation_lets_in(
    sso_required: bool, bound: set[str], provider: str | None, refusal: str | None
) -> None:
    policy = SignInPolicy("org_1", sso_required, frozenset(bound))
    assert policy.refusal(provider) == refusal


def test_a_device_cookie_is_for_one_account_and_a_while() -> None:
    now = [1_800_000_000.0]
    cookies = DeviceCookies(b"k" * 32, ttl=100, clock=lambda: now[0])
    cookie = cookies.issue("ada@example.com")
    nonce = cookies.nonce(cookie, "ada@example.com")
    assert nonce is not None and nonce == cookie.split(".")[0]
    assert cookies.nonce(cookie, "bob@example.com") is None  # another account's
    assert DeviceCookies(b"x" * 32, clock=lambda: now[0]).nonce(cookie, "ada@example.com") is None
    nonce_part, issued, mac = cookie.split(".")
    assert cookies.nonce(f"{nonce_part}.{int(issued) + 1}.{mac}", "ada@example.com") is None
    for garbage in ("", "a.b.c", cookie + "x", None):
        assert cookies.nonce(garbage, "ada@example.com") is None
    now[0] += 101
    assert cookies.nonce(cookie, "ada@example.com") is None  # expired
