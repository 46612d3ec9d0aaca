"""The chat page's files: read once, served from content-versioned URLs, gzipped.

Every file under ``web/`` is loaded when the app is built. The page links them
under ``/static/<version>/…``, where the version is a hash of all their contents,
so a browser may keep them for a year (``immutable``) and a new release, having
new URLs, is never mixed with a cached older file. The page itself (``/`` and
``/t/{thread_id}``) is revalidated on every load. Text files are compressed once
(gzip) and sent compressed to clients that accept it. Unversioned ``/static/…``
URLs still answer, revalidated each time.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

PLACEHOLDER = "/static/"
"""How index.html names its files; rewritten to the versioned prefix when served."""
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
COMPRESSIBLE = ("text/", "application/javascript", "application/json", "image/svg+xml")
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
         ".html": "text/html", ".json": "application/json", ".LICENSE": "text/plain"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Asset:
    """One file, as sent."""

    body: bytes
    compressed: bytes | None
    media_type: str
    etag: str


def _media_type(path: Path) -> str:
    media = (
        TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )
    return (
        f"{media}; charset=utf-8" if media.startswith("text/") or "javascript" in media else media
    )


def _asset(body: bytes, media_type: str) -> Asset:
    compressed = None
    if media_type.startswith(COMPRESSIBLE) and len(body) > 512:
        compressed = gzip.compress(body, compresslevel=9, mtime=0)
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return Asset(body, compressed, media_type, etag)


def accepts_gzip(request: Request) -> bool:
    """Whether the client accepts a gzip body (``Accept-Encoding``, q > 0)."""
    for part in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().removeprefix("q=").strip()
            try:
                return not q or float(q) > 0
            except ValueError:
                return False
    return False


class PageAssets:
    """The page and its files, loaded from ``root`` once."""

    def __init__(self, root: Path) -> None:
        digest = hashlib.sha256()
        files: dict[str, Asset] = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            name = path.relative_to(root).as_posix()
            if name == "index.html":
                continue
            body = path.read_bytes()
            digest.update(name.encode() + b"\0" + body + b"\0")
            files[name] = _asset(body, _media_type(path))
        self.version = digest.hexdigest()[:16]
        self.prefix = f"/static/{self.version}/"
        self.files = files
        html = (root / "index.html").read_text().replace(PLACEHOLDER, self.prefix)
        self.index = _asset(html.encode(), "text/html; charset=utf-8")

    def respond(self, request: Request, asset: Asset, cache: str) -> Response:
        """``asset`` for ``request``: 304 when the client has it, gzipped when it may."""
        headers = {"Cache-Control": cache, "ETag": asset.etag, "Vary": "Accept-Encoding"}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        body = asset.body
        if asset.compressed is not None and accepts_gzip(request):
            body = asset.compressed
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type=asset.media_type, headers=headers)

    async def page(self, request: Request) -> Response:
        """The chat page (``/`` and ``/t/{thread_id}``), revalidated on every load."""
        return self.respond(request, self.index, REVALIDATE)

    async def versioned(self, request: Request) -> Response:
        """``/static/<version>/<path>``: kept for a year; an unknown version or file is 404."""
        asset = self.files.get(request.path_params["path"])
        if asset is None or request.path_params["version"] != self.version:
            return Response("not found", status_code=404, media_type="text/plain")
        return self.respond(request, asset, IMMUTABLE)
