"""The OpenTelemetry implementation of ``atoll.telemetry.Tracing`` (imported only when
tracing is configured: ``pip install 'atoll[otel]'``).

``OtelTracing`` owns its ``TracerProvider``; it never installs a global one, so two
apps in one process (the tests) keep their spans apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from atoll.errors import ConfigurationError
from atoll.telemetry import Attributes, AttributeValue, Span

KINDS = {
    "internal": SpanKind.INTERNAL,
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
}


class _OtelSpan:
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def rename(self, name: str) -> None:
        self._span.update_name(name)

    def fail(self, code: str, message: str = "") -> None:
        self._span.set_attribute("error.type", code)
        self._span.set_status(Status(StatusCode.ERROR, message or code))

    def end(self) -> None:
        self._span.end()


class OtelTracing:
    """Spans through ``provider`` (any span processor and exporter: OTLP, in-memory)."""

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("atoll", _version())

    @contextmanager
    def span(
        self, name: str, attributes: Attributes | None = None, *, kind: str = "internal"
    ) -> Iterator[Span]:
        with self._tracer.start_as_current_span(
            name, kind=KINDS[kind], attributes=dict(attributes or {})
        ) as span:
            yield _OtelSpan(span)

    def start(self, name: str, attributes: Attributes | None = None) -> Span:
        return _OtelSpan(self._tracer.start_span(name, attributes=dict(attributes or {})))

    def annotate(self, attributes: Attributes) -> None:
        trace.get_current_span().set_attributes(dict(attributes))

    async def aclose(self) -> None:
        await asyncio.to_thread(self.provider.shutdown)  # flushes: it may wait on the network


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atoll")
    except PackageNotFoundError:
        return "unknown"


def otlp_tracing() -> OtelTracing:
    """Spans batched to the OTLP/HTTP collector the standard variables name
    (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``…_HEADERS``, ``OTEL_SERVICE_NAME`` …)."""
    import os

    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol.strip() not in ("", "http/protobuf"):
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: Atoll exports traces over "
            "http/protobuf only (point it at the collector's 4318 port)"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "atoll")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return OtelTracing(provider)
