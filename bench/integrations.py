"""What the doors for builders cost (issue 16): an MCP tool call (a session per call, over
stdio and streamable HTTP), a completion through the OpenAI-compatible API, and tracing.

- ``mcp_*_first_call_ms``: a call that opens the session (an agent invocation's first
  call of the server: connect or start the process, initialise, call), and
  ``mcp_*_next_call_ms``: a later call of the same invocation, through Atoll's MCP
  tool, in milliseconds; N of each; the session is closed after each invocation.
- ``users_*``: U users (each with a key) streaming one completion at the same moment:
  how many got their own answer (the arithmetic of their own question), and the time.
- ``openai_*``: N sequential and C concurrent streamed completions of the ``assistant``
  (offline model) through ``/v1/chat/completions`` with the official client, against an
  in-process server on loopback: time to the first text chunk and to ``[DONE]``.
- ``tracing_*``: runs per second of the engine alone (offline model, one tool call a
  run) without tracing and with OpenTelemetry spans into an in-memory exporter.

    python bench/integrations.py [--calls 20] [--completions 30] [--concurrent 10]
        [--users 200] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "scripts"), str(ROOT / "bench")]

SERVER = str(ROOT / "tests" / "mcp_tools_server.py")


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 1),
        "p95": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 1),
    }


async def mcp_calls(calls: int) -> dict[str, Any]:
    from atoll.runtime.tools.base import ToolScope
    from atoll.runtime.tools.mcp import McpServer, discover_mcp_tools

    from ports import free_port

    port = free_port()
    http = await asyncio.create_subprocess_exec(
        sys.executable, SERVER, "http", str(port), stderr=asyncio.subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the MCP server did not start") from None
                await asyncio.sleep(0.05)
        servers = {
            "stdio": McpServer(name="s", command=sys.executable, args=(SERVER, "stdio")),
            "http": McpServer(name="h", url=f"http://127.0.0.1:{port}/mcp"),
        }
        result: dict[str, Any] = {"calls": calls}
        for kind, server in servers.items():
            (add,) = [t for t in await discover_mcp_tools([server]) if t.name.endswith("__add")]
            first, later = [], []
            for index in range(calls):
                scope = ToolScope()
                context = SimpleNamespace(scope=scope)
                for timings in (first, later):
                    started = time.perf_counter()
                    value = await add.fn(arguments={"a": index, "b": 1}, context=context)
                    timings.append((time.perf_counter() - started) * 1000)
                    assert value == {"result": index + 1}, value
                await scope.aclose()
            result[f"mcp_{kind}_first_call_ms"] = summary(first)
            result[f"mcp_{kind}_next_call_ms"] = summary(later)
        return result
    finally:
        http.kill()
        await http.wait()


async def many_users(url: str, users: int) -> dict[str, Any]:
    """``users`` users, each with a key, all streaming one completion at once: how many
    got their own answer, and the wall time."""
    import httpx
    import openai

    from serving import PASSWORD

    async with httpx.AsyncClient(timeout=60) as http:

        async def key(index: int) -> str:
            token = (
                await http.post(
                    f"{url}/api/v1/auth/register",
                    json={"email": f"u{index}@example.com", "password": PASSWORD},
                )
            ).json()["access_token"]
            made = await http.post(
                f"{url}/api/v1/keys",
                json={"name": "bench"},
                headers={"Authorization": f"Bearer {token}"},
            )
            return str(made.json()["key"])

        keys = [await key(i) for i in range(users)]

    async def ask(index: int) -> tuple[bool, float]:
        started = time.perf_counter()
        client = openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key=keys[index], max_retries=0, timeout=120
        )
        try:
            stream = await client.chat.completions.create(
                model="assistant",
                messages=[{"role": "user", "content": f"What is {index}*1000?"}],
                stream=True,
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return str(index * 1000) in text, (time.perf_counter() - started) * 1000
        except openai.APIError:
            return False, (time.perf_counter() - started) * 1000
        finally:
            await client.close()

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(ask(i) for i in range(users)))
    return {
        "users_at_once": users,
        "users_own_answer": sum(ok for ok, _ in outcomes),
        "users_done_ms": summary([ms for _, ms in outcomes]),
        "users_wall_s": round(time.perf_counter() - started, 2),
    }


async def openai_completions(count: int, concurrent: int, users: int = 0) -> dict[str, Any]:
    import httpx
    import openai

    from atoll.server.serve import running_server

    from serving import PASSWORD, make_settings

    data = Path(tempfile.mkdtemp()) / "data"
    settings = make_settings(
        data,
        messages_per_minute=100_000,
        max_concurrent_runs=100,
        signups_per_hour=100_000,
        max_sockets_per_address=100_000,
        max_unauthenticated_sockets_per_address=100_000,
    )
    async with running_server(settings) as (url, _):
        async with httpx.AsyncClient() as http:
            token = (
                await http.post(
                    f"{url}/api/v1/auth/register",
                    json={"email": "bench@example.com", "password": PASSWORD},
                )
            ).json()["access_token"]
            key = (
                await http.post(
                    f"{url}/api/v1/keys",
                    json={"name": "bench"},
                    headers={"Authorization": f"Bearer {token}"},
                )
            ).json()["key"]
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)

        async def one(index: int) -> tuple[float, float]:
            started = time.perf_counter()
            first = 0.0
            stream = await client.chat.completions.create(
                model="assistant",
                messages=[{"role": "user", "content": f"What is {index}*7?"}],
                stream=True,
            )
            async for chunk in stream:
                if not first and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - started
            return first * 1000, (time.perf_counter() - started) * 1000

        sequential = [await one(i) for i in range(count)]
        many = await many_users(url, users) if users else {}
        started = time.perf_counter()
        together = await asyncio.gather(*(one(i) for i in range(concurrent)))
        wall = time.perf_counter() - started
        await client.close()
    return {
        "completions": count,
        "openai_first_text_ms": summary([f for f, _ in sequential]),
        "openai_done_ms": summary([d for _, d in sequential]),
        "concurrent": concurrent,
        "openai_concurrent_done_ms": summary([d for _, d in together]),
        "openai_concurrent_wall_s": round(wall, 2),
        **many,
    }


async def tracing_overhead(runs: int) -> dict[str, Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from atoll.bus.memory import InMemoryEventBus, InMemoryRunEventLog
    from atoll.otel import OtelTracing
    from atoll.runtime.builtins import builtin_registry
    from atoll.runtime.context import UserExecutionContext
    from atoll.runtime.engine import RunRequest
    from atoll.runtime.events import EventRecorder
    from atoll.runtime.factory import ExecutionEngineFactory
    from atoll.runtime.ids import new_id
    from atoll.runtime.limits import RuntimeLimits
    from atoll.runtime.llm.offline import OfflineProvider
    from atoll.telemetry import NoTracing, Tracing

    async def rate(tracing: Tracing) -> float:
        factory = ExecutionEngineFactory(
            registry=builtin_registry(),
            llm=OfflineProvider(),
            recorder=EventRecorder(InMemoryRunEventLog(), InMemoryEventBus()),
            limits=RuntimeLimits(max_concurrent_runs=runs),
            tracing=tracing,
        )
        async with factory:
            started = time.perf_counter()
            for _ in range(runs):
                context = UserExecutionContext(
                    user_id=new_id("usr"), thread_id=new_id("thr"), run_id=new_id("run"),
                    request_id=new_id("req"),
                )  # fmt: skip
                await factory.run(context, RunRequest("assistant", "What is 6*7?", new_id("msg")))
            return runs / (time.perf_counter() - started)

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    off = await rate(NoTracing())
    on = await rate(OtelTracing(provider))
    return {
        "runs": runs,
        "tracing_off_runs_per_s": round(off, 1),
        "tracing_on_runs_per_s": round(on, 1),
        "spans_per_run": round(len(exporter.get_finished_spans()) / runs, 1),
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    result.update(await mcp_calls(args.calls))
    result.update(await openai_completions(args.completions, args.concurrent, args.users))
    result.update(await tracing_overhead(args.runs))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--completions", type=int, default=30)
    parser.add_argument("--concurrent", type=int, default=10)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--users", type=int, default=200, help="users streaming at once")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    output = asyncio.run(measure(args))
    print(json.dumps(output, indent=2))
    if args.write:
        from report import write_section

        command = "python " + " ".join(["bench/integrations.py", *sys.argv[1:]])
        write_section("integrations", command, output)


if __name__ == "__main__":
    main()
