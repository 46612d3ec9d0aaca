"""Running the app under uvicorn with Atoll's graceful shutdown.

On SIGTERM/SIGINT: stop accepting connections, close every WebSocket with 1001
(clients reconnect and resume), let alive runs finish for the grace period,
cancel what is left (every run still ends with a terminal event) and end the
SSE streams — all before uvicorn closes connections, so the whole shutdown
takes one grace period plus a moment (``Services.stop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn

from atoll.aio import resolved_loop, run_in_loop
from atoll.config import Settings
from atoll.server.app import create_app
from atoll.server.http11 import guarded_h11
from atoll.server.logs import install_log_redaction
from atoll.server.services import Services, running_worker
from atoll.telemetry import Tracing

logger = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SHUTDOWN_BACKSTOP = 3
"""Seconds uvicorn waits for connections after ``Services.stop`` has ended every stream."""


class AtollServer(uvicorn.Server):
    """uvicorn's server, with the app drained before uvicorn closes connections."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain the app (1001 to sockets, grace for runs), then shut uvicorn down."""
        for server in self.servers:
            server.close()
        app = self.config.loaded_app
        services: Services | None = None
        while app is not None and services is None:
            services = getattr(getattr(app, "state", None), "services", None)
            app = getattr(app, "app", None)
        if services is not None:
            await services.stop()  # one grace period; the lifespan's stop() then returns at once
        await super().shutdown(sockets)


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings, *, port: int = 0, tracing: Tracing | None = None
) -> AsyncIterator[tuple[str, AtollServer]]:
    """Serve ``settings`` on loopback inside the current event loop (tests, scripts, embedding).

    Yields the base URL and the server; ``server.should_exit = True`` stops it early.
    """
    config = uvicorn_config(
        settings, host="127.0.0.1", port=port, log_level="warning", tracing=tracing
    )
    server = AtollServer(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server exited during start-up")
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{bound}", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)


def uvicorn_config(
    settings: Settings, *, host: str, port: int, log_level: str, tracing: Tracing | None = None
) -> uvicorn.Config:
    """How uvicorn serves Atoll: the guarded h11 protocol, WebSockets without compression,
    idle and header deadlines, and forwarded addresses only from trusted proxies."""
    config = uvicorn.Config(
        create_app(settings, tracing=tracing),
        host=host,
        port=port,
        log_level=log_level,
        http=guarded_h11(
            settings.http_header_timeout,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
        ),
        ws="websockets-sansio",
        loop=resolved_loop(settings.event_loop),
        ws_per_message_deflate=False,
        ws_max_size=max(settings.max_ws_frame_bytes * 4, 1 << 20),
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_keep_alive=int(settings.http_keepalive_timeout),
        timeout_graceful_shutdown=SHUTDOWN_BACKSTOP,
    )
    install_log_redaction()
    return config


def serve(settings: Settings) -> None:
    """Run Atoll until interrupted."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)  # Atoll's and libraries'
    AtollServer(
        uvicorn_config(settings, host=settings.host, port=settings.port, log_level="info")
    ).run()


class QuietServer(uvicorn.Server):
    """uvicorn inside a process that handles SIGTERM/SIGINT itself (the worker)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave the process's signal handlers alone."""
        yield


def run_worker(settings: Settings) -> None:
    """Run an ``atoll worker`` until SIGTERM/SIGINT, then stop gracefully."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    install_log_redaction()
    run_in_loop(_work(settings), settings.event_loop)


async def _work(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_worker(settings) as worker:
        if settings.worker_metrics_port is None:
            await worker.serve(stop)
            return
        config = uvicorn.Config(
            worker.http_app(),
            host=settings.host,
            port=settings.worker_metrics_port,
            log_level="warning",
            lifespan="off",
        )
        http = QuietServer(config)
        task = asyncio.create_task(http.serve(), name="atoll-worker-http")
        try:
            await worker.serve(stop)
        finally:
            http.should_exit = True
            await asyncio.wait_for(task, 10)
