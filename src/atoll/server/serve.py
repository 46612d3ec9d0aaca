"""Running the app under uvicorn with Atoll's graceful shutdown.

On SIGTERM/SIGINT: stop accepting connections, close every WebSocket with 1001
(clients reconnect and resume), let alive runs finish for the grace period;
then the lifespan cancels what is left, so every run still ends with a
terminal event.
"""

from __future__ import annotations

import logging
import socket

import uvicorn

from atoll.config import Settings
from atoll.server.app import create_app
from atoll.server.services import Services

logger = logging.getLogger(__name__)


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
            services.accepting = False
            await services.connections.close_all(1001, "server shutting down")
            await services.runs.drain(services.settings.shutdown_grace)
        await super().shutdown(sockets)


def serve(settings: Settings) -> None:
    """Run Atoll until interrupted."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=max(settings.max_ws_frame_bytes * 4, 1 << 20),
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 5,
    )
    AtollServer(config).run()
