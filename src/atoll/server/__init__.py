"""The HTTP, WebSocket and SSE server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atoll.server.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from atoll.server.app import create_app

        return create_app
    raise AttributeError(name)
