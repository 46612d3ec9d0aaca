"""OpenTelemetry traces (issue 16): spans asserted by name, parent and attributes with
the SDK's in-memory exporter; a real ``atoll serve`` exporting OTLP/HTTP to a collector
written here; and nothing of OpenTelemetry imported when it is not configured."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from atoll.client import AtollClient
from atoll.otel import OtelTracing
from atoll.telemetry import hashed

from inprocess import running_app
from serving import PASSWORD, make_settings, serve_process
from support import until

pytestmark = [pytest.mark.e2e]


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_of(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> ReadableSpan | None:
    if span.parent is None:
        return None
    return next((s for s in spans if s.context.span_id == span.parent.span_id), None)


@pytest.mark.inprocess
async def test_a_run_is_a_tree_of_spans_with_genai_attributes_and_hashed_ids(
    tmp_path: Path,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = make_settings(tmp_path / "data")
    async with (
        running_app(settings, tracing=OtelTracing(provider)) as app,
        app.client() as ada,
    ):
        await ada.register("ada@example.com", PASSWORD)
        me = await ada.request("GET", "/me")
        accepted = await ada.chat("What is 17*23?")
        run_id = accepted["run"]["id"]
        events = [e async for e in ada.stream(run_id)]
        assert events[-1]["type"] == "agent_completed"
        await until(lambda: named(exporter.get_finished_spans(), "atoll.run"), what="run span")
    spans = exporter.get_finished_spans()

    (run,) = named(spans, "atoll.run")
    assert run.attributes["atoll.run_id"] == run_id
    assert run.attributes["atoll.user"] == hashed(me["id"])
    assert run.attributes["atoll.run.state"] == "completed"
    assert run.attributes["gen_ai.usage.input_tokens"] > 0
    assert run.attributes["gen_ai.conversation.id"] == accepted["thread_id"]
    (supervisor,) = named(spans, "invoke_agent supervisor")
    assert parent_of(supervisor, spans) is run
    (assistant,) = named(spans, "invoke_agent assistant")
    assert parent_of(assistant, spans) is supervisor  # the specialist, under its supervisor
    assert assistant.attributes["gen_ai.operation.name"] == "invoke_agent"
    (tool,) = named(spans, "execute_tool calculator")
    assert parent_of(tool, spans) is assistant
    assert tool.attributes["gen_ai.tool.name"] == "calculator"
    chats = [s for s in spans if s.name.startswith("chat ")]
    assert chats and all(parent_of(c, spans) in (supervisor, assistant) for c in chats)
    assert all(c.attributes["gen_ai.operation.name"] == "chat" for c in chats)
    assert (
        sum(c.attributes["gen_ai.usage.output_tokens"] for c in chats)
        == (events[-1]["data"]["usage"]["completion_tokens"])
    )
    (post,) = named(spans, "POST /api/v1/chat")
    assert post.kind == SpanKind.SERVER
    assert post.attributes["http.route"] == "/api/v1/chat"
    assert post.attributes["http.response.status_code"] == 202
    assert post.attributes["atoll.user"] == hashed(me["id"])
    # Identifiers only hashed; no message text, email or token in any attribute.
    values = json.dumps([dict(s.attributes or {}) for s in spans], default=str)
    for secret in (me["id"], "ada@example.com", "17*23", str(ada.access_token)):
        assert secret not in values, secret


@asynccontextmanager
async def collector() -> AsyncIterator[tuple[str, list[ExportTraceServiceRequest]]]:
    """An OTLP/HTTP trace receiver on loopback: what it was sent, decoded."""
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: Request) -> Response:
        received.append(ExportTraceServiceRequest.FromString(await request.body()))
        return Response(b"", media_type="application/x-protobuf")

    app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started, what="collector started")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.should_exit = True
        await task


def span_names(received: list[ExportTraceServiceRequest]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for request in received:
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    found[span.name] = service.get("service.name")
    return found


async def test_atoll_serve_exports_otlp_when_the_standard_variables_say_so(
    tmp_path: Path,
) -> None:
    async with collector() as (endpoint, received):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "atoll-test",
               "OTEL_BSP_SCHEDULE_DELAY": "100"}  # fmt: skip
        with serve_process(tmp_path / "data", **env) as server:
            async with AtollClient(server.url) as ada:
                await ada.register("ada@example.com", PASSWORD)
                accepted = await ada.chat("What is 2+2?", agent="assistant")
                _ = [e async for e in ada.stream(accepted["run"]["id"])]
            await until(
                lambda: "atoll.run" in span_names(received), within=15, what="spans exported"
            )
            # uvicorn re-raises the SIGTERM it handled, once it has shut down gracefully.
            assert server.stop() in (0, -signal.SIGTERM)
    names = span_names(received)
    assert {"atoll.run", "invoke_agent assistant", "POST /api/v1/chat"} <= set(names)
    assert set(names.values()) == {"atoll-test"}


def test_nothing_of_opentelemetry_is_imported_when_it_is_not_configured(tmp_path: Path) -> None:
    """Atoll's runtime and its tracing switch import none of it, and the app does not load
    ``atoll.otel`` (FastAPI and redis-py import parts of OpenTelemetry themselves when it
    is installed: that is theirs, and it traces nothing without a provider)."""
    code = (
        "import sys\n"
        "import atoll, atoll.runtime.factory, atoll.runtime.builtins, atoll.telemetry\n"
        "tracing = atoll.telemetry.tracing_from_environment()\n"
        "print(type(tracing).__name__, [m for m in sys.modules if m.startswith('opentelemetry')])\n"
        "from atoll.config import Settings\n"
        "from atoll.server.app import create_app\n"
        f"create_app(Settings(data_dir={str(tmp_path)!r}))\n"
        "print('atoll.otel' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.split("\n")[:2] == ["NoTracing []", "False"]
