"""Tracing: what the server, the engine, the dispatcher and model calls report as spans.

``tracing_from_environment()`` reads OpenTelemetry's standard variables: with
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, and
``OTEL_SDK_DISABLED`` not ``true``, spans go to that OTLP/HTTP collector (see
``atoll.otel``); otherwise tracing is ``NoTracing`` and no OpenTelemetry module is
ever imported. Code that traces takes a ``Tracing`` and never imports OpenTelemetry.

What is traced (docs/integrations.md, "Traces"): HTTP requests and WebSocket
connections (server spans), each run (``atoll.run``), each agent invocation
(``invoke_agent <agent>``), each tool call (``execute_tool <tool>``) and each model
call (``chat <model>``), parent to child, with OpenTelemetry's GenAI attribute names.
Users and organisations appear only as ``hashed()`` values; message text, tool
arguments and results never do.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

AttributeValue = str | int | float | bool
Attributes = Mapping[str, AttributeValue]


def hashed(value: str) -> str:
    """A stable, non-reversible stand-in for an identifier (16 hex digits of SHA-256)."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


class Span(Protocol):
    """One span, as the code that traces sees it."""

    def set(self, key: str, value: AttributeValue) -> None:
        """Set an attribute."""

    def rename(self, name: str) -> None:
        """Change the span's name (e.g. once the route is known)."""

    def fail(self, code: str, message: str = "") -> None:
        """Mark the span as failed with a stable code."""

    def end(self) -> None:
        """End a span made by ``Tracing.start`` (``span`` ends its own)."""


class Tracing(Protocol):
    """Makes spans."""

    enabled: bool

    def span(
        self, name: str, attributes: Attributes | None = None, *, kind: str = "internal"
    ) -> AbstractContextManager[Span]:
        """A context manager: the span is the current one inside the block; an exception
        leaving the block is recorded on it."""

    def start(self, name: str, attributes: Attributes | None = None) -> Span:
        """A span that is not made current (for async generators), ended with ``end``."""

    def annotate(self, attributes: Attributes) -> None:
        """Set attributes on the current span (e.g. the request's, once the caller is known)."""

    async def aclose(self) -> None:
        """Send what is buffered and stop."""


class _NoSpan:
    __slots__ = ()

    def set(self, key: str, value: AttributeValue) -> None:
        pass

    def rename(self, name: str) -> None:
        pass

    def fail(self, code: str, message: str = "") -> None:
        pass

    def end(self) -> None:
        pass


class NoTracing:
    """Tracing switched off: every span is a no-op costing one call."""

    enabled = False

    def __init__(self) -> None:
        self._span = _NoSpan()

    @contextmanager
    def span(
        self, name: str, attributes: Attributes | None = None, *, kind: str = "internal"
    ) -> Iterator[Span]:
        yield self._span

    def start(self, name: str, attributes: Attributes | None = None) -> Span:
        return self._span

    def annotate(self, attributes: Attributes) -> None:
        pass

    async def aclose(self) -> None:
        pass


TRACES_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def tracing_from_environment(environ: Mapping[str, str] | None = None) -> Tracing:
    """OTLP tracing when OpenTelemetry's variables ask for it, else ``NoTracing``."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return NoTracing()
    if not any(env.get(name, "").strip() for name in TRACES_VARIABLES):
        return NoTracing()
    try:
        from atoll.otel import otlp_tracing
    except ImportError:
        from atoll.errors import ConfigurationError

        raise ConfigurationError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed: "
            "pip install 'atoll[otel]'"
        ) from None
    return otlp_tracing()
