"""The page's own files: an icon, and caching that never mixes releases."""

from __future__ import annotations

import httpx
import pytest

pytestmark = [pytest.mark.e2e]


async def test_the_icon_is_served_and_linked(server: str) -> None:
    async with httpx.AsyncClient(base_url=server) as http:
        page = await http.get("/")
        assert 'rel="icon" href="/static/favicon.svg"' in page.text
        for path in ("/static/favicon.svg", "/favicon.ico"):
            icon = await http.get(path)
            assert icon.status_code == 200, path
            assert icon.headers["content-type"].startswith("image/svg+xml")
            assert icon.text.startswith("<svg")


async def test_static_files_are_revalidated_and_unchanged_ones_answer_304(server: str) -> None:
    async with httpx.AsyncClient(base_url=server) as http:
        assert (await http.get("/")).headers["cache-control"] == "no-cache"
        for path in ("/static/app.js", "/static/style.css", "/static/favicon.svg"):
            first = await http.get(path)
            assert first.headers["cache-control"] == "no-cache", path
            etag = first.headers["etag"]
            again = await http.get(path, headers={"If-None-Match": etag})
            assert again.status_code == 304, path
