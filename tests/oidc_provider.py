"""A real OpenID Provider for the tests: panva/node-oidc-provider (npm, pinned by
tests/oidc/package-lock.json), run with Node on a free loopback port."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import RSAKey

from ports import free_port

HERE = Path(__file__).resolve().parent / "oidc"
CLIENT_ID = "atoll-tests"
CLIENT_SECRET = "client-secret-for-tests-only"


def install() -> None:
    """``npm ci`` once: the exact packages of the lock file, integrity checked."""
    if (HERE / "node_modules" / "oidc-provider").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed for the sign-in tests (Debian packages nodejs, npm)")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=HERE, check=True,
        capture_output=True, timeout=300,
    )  # fmt: skip


def signing_key(kid: str) -> dict[str, Any]:
    """A new RSA signing key as a private JWK."""
    key = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})
    return dict(key.as_dict(private=True))


@dataclass
class Provider:
    issuer: str
    process: subprocess.Popen[str]


@contextmanager
def oidc_provider(
    *, redirect_uris: list[str], accounts: dict[str, dict[str, Any]],
    keys: list[dict[str, Any]] | None = None,
) -> Iterator[Provider]:  # fmt: skip
    """A started provider with one confidential client (``CLIENT_ID``) and ``accounts``
    (login -> claims); stopped at the end."""
    install()
    port = free_port()
    config = {
        "clients": [{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                     "redirect_uris": redirect_uris}],
        "accounts": accounts,
        "jwks": {"keys": keys or [signing_key("first")]},
    }  # fmt: skip
    env = {**os.environ, "PORT": str(port), "OIDC_CONFIG": json.dumps(config)}
    process = subprocess.Popen(
        [shutil.which("node") or "node", str(HERE / "provider.mjs")], env=env, cwd=HERE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        assert process.stdout is not None
        line = process.stdout.readline()
        while not line.startswith("ready"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the OpenID Provider did not start: {line}")
            line = process.stdout.readline()
        yield Provider(issuer=f"http://127.0.0.1:{port}", process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def code_from_provider(authorization_url: str, login: str) -> str:
    """Go through the provider's development login and consent pages with a plain HTTP
    client (no browser, no Atoll cookie): the callback URL the provider redirects to."""
    import re

    import httpx

    async with httpx.AsyncClient() as http:
        url = authorization_url
        for _ in range(20):
            answer = await http.get(url)
            if answer.status_code in (302, 303):
                url = str(httpx.URL(url).join(answer.headers["location"]))
                if "/callback" in url:
                    return url
                continue
            action = re.search(r'action="([^"]+)"', answer.text)
            prompt = re.search(r'name="prompt" value="([^"]+)"', answer.text)
            assert action and prompt, answer.text[:500]
            form = {"prompt": prompt.group(1)}
            if prompt.group(1) == "login":
                form |= {"login": login, "password": "any"}
            answer = await http.post(str(httpx.URL(url).join(action.group(1))), data=form)
            assert answer.status_code in (302, 303), answer.text[:500]
            url = str(httpx.URL(url).join(answer.headers["location"]))
            if "/callback" in url:
                return url
    raise AssertionError("the provider never redirected to the callback")
