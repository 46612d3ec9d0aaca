"""The page's own files: an icon, versioned URLs kept for a year, gzip, vendored libraries."""

from __future__ import annotations

import gzip
import json
import re

import httpx
import pytest
from vendor import LOCK, VENDOR, check

from inprocess import InProcessApp

pytestmark = [pytest.mark.e2e]


async def versioned_prefix(http: httpx.AsyncClient) -> str:
    page = await http.get("/")
    match = re.search(r'src="(/static/[0-9a-f]{16}/)app\.js"', page.text)
    assert match, page.text[:500]
    return match.group(1)


async def test_the_icon_is_served_and_linked(app: InProcessApp) -> None:
    async with app.http() as http:
        prefix = await versioned_prefix(http)
        page = await http.get("/")
        assert f'rel="icon" href="{prefix}favicon.svg"' in page.text
        for path in (f"{prefix}favicon.svg", "/static/favicon.svg", "/favicon.ico"):
            icon = await http.get(path)
            assert icon.status_code == 200, path
            assert icon.headers["content-type"].startswith("image/svg+xml")
            assert icon.text.startswith("<svg")


async def test_versioned_files_are_kept_and_the_page_is_revalidated(app: InProcessApp) -> None:
    async with app.http() as http:
        prefix = await versioned_prefix(http)
        page = await http.get("/")
        assert page.headers["cache-control"] == "no-cache"
        assert (
            await http.get("/", headers={"If-None-Match": page.headers["etag"]})
        ).status_code == 304
        thread_page = await http.get("/t/thr_anything")  # a thread's URL is the page too
        assert thread_page.status_code == 200 and thread_page.text == page.text
        assert "script-src 'self'" in thread_page.headers["content-security-policy"]
        links = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
        assert len(links) >= 6
        for link in links:
            answer = await http.get(link)
            assert answer.status_code == 200, link
            assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
        for name in ("app.js", "session.js", "markdown.js", "vendor/marked.js", "vendor/purify.js"):
            module = await http.get(prefix + name)
            assert module.headers["content-type"].startswith("text/javascript"), name
        stale = prefix.replace(prefix[8:24], "0" * 16)
        assert (await http.get(stale + "app.js")).status_code == 404  # another release's URL
        assert (await http.get(prefix + "nothing.js")).status_code == 404
        # Unversioned URLs still answer, revalidated every time.
        for path in ("/static/app.js", "/static/style.css"):
            first = await http.get(path)
            assert first.headers["cache-control"] == "no-cache", path
            again = await http.get(path, headers={"If-None-Match": first.headers["etag"]})
            assert again.status_code == 304, path


async def test_text_files_are_sent_gzipped_to_clients_that_accept_it(app: InProcessApp) -> None:
    async with app.http() as http:
        prefix = await versioned_prefix(http)
        raw = await http.get(
            prefix + "vendor/highlight.js", headers={"Accept-Encoding": "identity"}
        )
        assert "content-encoding" not in raw.headers
        assert raw.headers["vary"] == "Accept-Encoding"
        gzipped = {"Accept-Encoding": "gzip"}
        async with http.stream("GET", prefix + "vendor/highlight.js", headers=gzipped) as packed:
            body = b"".join([chunk async for chunk in packed.aiter_raw()])  # as sent
        assert packed.headers["content-encoding"] == "gzip"
        assert len(body) < len(raw.content) / 2
        assert gzip.decompress(body) == raw.content
        refused = await http.get(prefix + "app.js", headers={"Accept-Encoding": "gzip;q=0"})
        assert "content-encoding" not in refused.headers


def test_the_vendored_libraries_are_those_the_lock_pins() -> None:
    assert check(json.loads(LOCK.read_text()), VENDOR) == []
    names = {p.name for p in VENDOR.iterdir()}
    assert {"marked.js", "purify.js", "highlight.js"} <= names
    assert not any(name.endswith(".map") for name in names)
