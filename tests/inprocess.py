"""Atoll's app inside the test's own event loop, with no socket: ``running_app(settings)``.

The app is the one ``atoll serve`` runs (``create_app``), started and stopped through
its ASGI lifespan as uvicorn does, and stopped in uvicorn's order (``Services.stop``,
then the requests still open, then the lifespan). HTTP reaches it through an httpx
transport that calls it directly: REST, SSE and streamed POSTs, whose bodies arrive
chunk by chunk as they are sent (httpx's own ``ASGITransport`` would hold a stream
until it ends). What needs a real connection (WebSockets, header deadlines, a
process) uses ``running_server`` or ``ServeProcess`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx
from fastapi import FastAPI

from atoll.client import AtollClient
from atoll.config import Settings
from atoll.server.app import create_app
from atoll.server.services import Services
from atoll.telemetry import Tracing

URL = "http://atoll.invalid"
"""The base URL of an in-process app (``.invalid`` never resolves: a real connection to
it fails at once instead of reaching something else)."""
CLIENT = ("127.0.0.1", 50_000)
"""The client address every in-process request comes from."""
SETTLE_SECONDS = 10.0
"""How long a request still running at the end may take before it is cancelled."""

Message = MutableMapping[str, Any]
logger = logging.getLogger("uvicorn.error")  # where uvicorn logs an app's exception


@dataclass
class _Exchange:
    """One request's conversation with the app."""

    request: httpx.Request
    started: asyncio.Future[Message] = field(default_factory=asyncio.Future)
    chunks: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    body: AsyncIterator[bytes] | None = None
    body_sent: bool = False

    async def receive(self) -> Message:
        """The request's body, then (once the client closes the answer) a disconnect."""
        if not self.body_sent:
            if self.body is None:
                self.body = aiter(self.request.stream)  # type: ignore[arg-type]
            chunk = await anext(self.body, None)
            if chunk is not None:
                return {"type": "http.request", "body": chunk, "more_body": True}
            self.body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        """Take the answer's start and body as the app sends them."""
        if message["type"] == "http.response.start":
            if not self.started.done():
                self.started.set_result(message)
        elif message["type"] == "http.response.body" and not self.disconnected.is_set():
            body = message.get("body", b"")
            if body:
                self.chunks.put_nowait(body)
            if not message.get("more_body", False):
                self.chunks.put_nowait(None)


class _Body(httpx.AsyncByteStream):
    """An answer's body as the app sends it; closing it tells the app the client left."""

    def __init__(self, exchange: _Exchange) -> None:
        self.exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self.exchange.chunks.get()) is not None:
            yield chunk

    async def aclose(self) -> None:
        """The client is done: as a closed connection, the app sees a disconnect (the
        transport's ``finish`` waits for what is still running)."""
        self.exchange.disconnected.set()


async def settle(task: asyncio.Task[None]) -> None:
    """Let ``task`` finish; cancel it after ``SETTLE_SECONDS``."""
    done, _ = await asyncio.wait({task}, timeout=SETTLE_SECONDS)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class AppTransport(httpx.AsyncBaseTransport):
    """httpx requests answered by an ASGI app in this event loop, streamed both ways."""

    def __init__(self, app: FastAPI, state: dict[str, Any]) -> None:
        self.app, self.state = app, state
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        exchange = _Exchange(request)
        task = asyncio.create_task(self._serve(exchange), name=f"asgi {request.url.path}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        await asyncio.wait({exchange.started, task}, return_when=asyncio.FIRST_COMPLETED)
        if not exchange.started.done():  # the app ended without answering
            exchange.started.set_result({"status": 500, "headers": []})
            exchange.chunks.put_nowait(b"Internal Server Error")
            exchange.chunks.put_nowait(None)
        start = exchange.started.result()
        return httpx.Response(
            start["status"],
            headers=[(bytes(k), bytes(v)) for k, v in start.get("headers", [])],
            stream=_Body(exchange),
            request=request,
        )

    async def _serve(self, exchange: _Exchange) -> None:
        try:
            await self.app(self._scope(exchange.request), exchange.receive, exchange.send)
        except Exception:
            logger.exception("Exception in ASGI application")  # as uvicorn: logged, not raised
        finally:
            exchange.chunks.put_nowait(None)  # the body ends with the app, however it ended

    def _scope(self, request: httpx.Request) -> Message:
        """The scope uvicorn's h11 protocol would give this request."""
        url = request.url
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": (url.host, url.port or 80),
            "client": CLIENT,
            "scheme": url.scheme,
            "method": request.method,
            "root_path": "",
            "path": unquote(url.raw_path.partition(b"?")[0].decode("ascii")),
            "raw_path": url.raw_path.partition(b"?")[0],
            "query_string": url.query,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "state": self.state.copy(),
        }

    async def finish(self) -> None:
        """Let the requests still running end (cancelled after ``SETTLE_SECONDS``)."""
        for task in list(self.tasks):
            await settle(task)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """Run ``app``'s ASGI lifespan: startup, then (at the end) shutdown; yields its state.

    An app that fails to start raises what it raised (uvicorn logs it and exits).
    """
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put), name="asgi lifespan")

    async def reply(to: str) -> None:
        inbox.put_nowait({"type": f"lifespan.{to}"})
        answer = asyncio.ensure_future(outbox.get())
        await asyncio.wait({answer, task}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            task.result()  # raises the app's error
            raise RuntimeError(f"the app ended its lifespan during {to}")
        if answer.result()["type"] != f"lifespan.{to}.complete":
            await asyncio.wait({task}, timeout=SETTLE_SECONDS)  # it raises what failed
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
            raise RuntimeError(f"lifespan {to} failed: {answer.result().get('message', '')}")

    await reply("startup")
    try:
        yield state
    finally:
        await reply("shutdown")
        await task


@dataclass
class InProcessApp:
    """A started app, its transport, and clients that reach it."""

    app: FastAPI
    transport: AppTransport
    url: str = URL

    @property
    def services(self) -> Services:
        """What the app built in its lifespan."""
        services: Services = self.app.state.services
        return services

    def client(self, *, timeout: float = 30.0) -> AtollClient:
        """An ``AtollClient`` for REST and SSE (its ``connect()`` needs a real server)."""
        return AtollClient(self.url, timeout=timeout, transport=self.transport)

    def http(self, **options: Any) -> httpx.AsyncClient:
        """A plain httpx client of the app."""
        return httpx.AsyncClient(base_url=self.url, transport=self.transport, **options)


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, *, tracing: Tracing | None = None
) -> AsyncIterator[InProcessApp]:
    """``create_app(settings)`` started in this event loop; stopped as ``atoll serve`` stops."""
    app = create_app(settings, tracing=tracing)
    async with lifespan(app) as state:
        running = InProcessApp(app, AppTransport(app, state))
        try:
            yield running
        finally:
            await running.services.stop()  # ends every stream, as AtollServer.shutdown does
            await running.transport.finish()


Target = str | InProcessApp
"""Where a test's clients go: a real server's base URL (WebSockets need one) or the app."""


def client_of(target: Target, *, timeout: float = 30.0) -> AtollClient:
    """An ``AtollClient`` of a real server (by URL) or of the in-process app."""
    if isinstance(target, str):
        return AtollClient(target, timeout=timeout)
    return target.client(timeout=timeout)
