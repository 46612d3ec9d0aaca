"""Request bodies are decoded by ``load_json``, the same decoding as WebSocket frames.

FastAPI decodes a JSON body with ``json.loads``, which lets through what cannot be
stored (a lone surrogate, U+0000) wherever a schema does not look: in a model from
another package (AG-UI's ``RunAgentInput``), a list, a key. Every API route is a
``StrictJSONRoute`` instead, whose request decodes with ``load_json``: a body that
does not pass is a 422 ``validation_error`` naming the place, before any handler
runs, on every door alike (``problems._validation_error`` reads the place).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from atoll.store.bounds import load_json


class StrictJSONRequest(Request):
    """A request whose ``json()`` is ``load_json`` of its body."""

    async def json(self) -> Any:
        """The body decoded by ``load_json`` (``InvalidJSONError`` when it does not pass)."""
        if not hasattr(self, "_json"):
            self._json = load_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """An API route whose body is decoded by ``load_json`` (``StrictJSONRequest``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
