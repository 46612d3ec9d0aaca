"""MCP servers' tools as Atoll tools, through the official ``mcp`` SDK.

At start-up ``discover_mcp_tools`` connects to every configured server once, lists its
tools and makes each an Atoll ``Tool`` named ``<server>__<tool>``: its JSON Schema is
the server's ``inputSchema`` (arguments are checked against it before the call), its
description the server's; plan and role gating, the timeout, the tool rate limit
and the ``tool_executing``/``tool_completed`` events are the dispatcher's, as for any
tool. A server that cannot be reached at start-up stops the start, naming it.

**Isolation: one MCP session per agent invocation.** The first call of a server's
tool in an agent invocation (a run's agent, or one sub-agent call) opens a session
(a stdio server is a fresh process; an HTTP server a fresh session), its later calls
reuse it, and the dispatcher closes it when the invocation ends (``ToolScope``).
Nothing an MCP server keeps in a session can reach another run, sub-agent or user;
the price is a process start (stdio) or a session set-up (HTTP) per invocation that
uses the server, measured in docs/benchmarks.md. The credentials are the operator's
(``env``, ``headers``), the same for every user: a server that must act as the user
needs its own auth, which Atoll does not forward.

A server that crashes mid-call, closes the connection, answers an error or hangs
gives a tool error (``tool_error``, or ``tool_timeout`` after the call's timeout),
never a stuck run: leaving the call's context ends the session and kills a stdio
server's process. Every message a server sends is bounded in bytes while it is read
(``mcp_transports``: ``Settings.mcp_max_result_bytes``), and a stdio server that
exits is named with its exit status (its stderr goes to the log, and into the
start-up error when it fails at start).

``mcp`` is imported only when a server is configured, so runs without MCP never
load it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel

from atoll.errors import ConfigurationError, ToolError, ToolValidationError
from atoll.runtime.tools.base import Tool, ToolContext
from atoll.runtime.tools.mcp_transports import TransportReport, bounded_http, bounded_stdio

if TYPE_CHECKING:
    from mcp import ClientSession

logger = logging.getLogger(__name__)

SEPARATOR = "__"
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What model providers accept as a function name; longer or odder names are skipped."""
DISCOVERY_TIMEOUT = 30.0
CLOSE_TIMEOUT = 5.0
"""Seconds a session may take to close before it is cut off (its process killed)."""
MAX_RESULT_CHARS = 100_000
"""A result's text beyond this is cut (the model would be flooded, the event log too)."""


@dataclass(frozen=True, slots=True)
class McpServer:
    """How to reach one MCP server (from ``McpServerSettings``)."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    url: str | None = None
    headers: Mapping[str, str] | None = None
    timeout: float | None = None
    tools: frozenset[str] | None = None
    plans: frozenset[str] | None = None
    roles: frozenset[str] | None = None

    max_message_bytes: int = 1 << 20
    """The largest message read from the server (``Settings.mcp_max_result_bytes``)."""

    @contextlib.asynccontextmanager
    async def session(self, report: TransportReport | None = None) -> AsyncIterator[ClientSession]:
        """A new, initialised session; closed (the process ended) when the block ends.
        What its transport finds wrong with the server goes to ``report``."""
        from mcp import ClientSession

        report = report if report is not None else TransportReport()
        limit = self.max_message_bytes
        if self.command is not None:
            transport = bounded_stdio(
                self.name, command=self.command, args=self.args, env=self.env, cwd=self.cwd,
                limit=limit, report=report,
            )  # fmt: skip
        else:
            assert self.url is not None
            transport = bounded_http(
                self.name, url=self.url, headers=self.headers, http_timeout=self.timeout,
                limit=limit, report=report,
            )  # fmt: skip
        async with transport as streams, ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            yield session


class McpSession:
    """One open session with one server, owned by a task of its own.

    The task enters the SDK's contexts (which must be left by the task that entered
    them), then runs the calls it is handed one at a time. A call whose caller stops
    waiting (the tool's timeout, the run cancelled) or that breaks the session ends the
    task, and with it the session and a stdio server's process.
    """

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self.report = TransportReport()
        self.broken = False
        self._calls: asyncio.Queue[tuple[str, dict[str, Any], asyncio.Future[Any]] | None] = (
            asyncio.Queue()
        )
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._serve(), name=f"atoll-mcp-{server.name}")

    async def _serve(self) -> None:
        pending: asyncio.Future[Any] | None = None
        try:
            async with self.server.session(self.report) as session:
                self._ready.set_result(None)
                while (item := await self._calls.get()) is not None:
                    name, arguments, pending = item
                    try:
                        result = await session.call_tool(name, arguments)
                    except Exception as exc:
                        if not pending.done():
                            pending.set_exception(self.report.fault or exc)
                        self.broken = True
                        return
                    if not pending.done():
                        pending.set_result(result)
                    pending = None
        except BaseException as exc:
            self.broken = True
            error: Exception = (
                self.report.fault
                or (exc if isinstance(exc, Exception) else None)
                or ToolError("the MCP session ended")
            )
            for future in (self._ready, pending):
                if future is not None and not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        """The server's ``CallToolResult``; raises what broke the session."""
        await asyncio.shield(self._ready)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls.put_nowait((name, arguments, future))
        try:
            return await future
        except asyncio.CancelledError:
            self.broken = True  # the server may be hung mid-call: end it, not wait for it
            self._task.cancel()
            raise

    async def aclose(self) -> None:
        """End the session (bounded: a server that does not close is cut off)."""
        self._calls.put_nowait(None)
        done, _ = await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT)
        if not done:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT)
        if self._task.done() and not self._task.cancelled():
            self._task.exception()  # retrieved: it was reported to the call it broke
        if not self._ready.done():
            self._ready.cancel()
        elif not self._ready.cancelled():
            self._ready.exception()


class _Unchecked(BaseModel):
    """The arguments model of an MCP tool (``Tool.check`` validates instead)."""


def _checker(name: str, schema: Mapping[str, Any]) -> Any:
    """``Tool.check`` for ``schema``: the arguments as they are, or ``ToolValidationError``
    naming each place that does not match."""
    import jsonschema  # type: ignore[import-untyped]

    validator_class = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    try:
        validator_class.check_schema(schema)
        validator = validator_class(schema)
    except jsonschema.SchemaError:
        validator = jsonschema.Draft202012Validator({"type": "object"})

    def check(arguments: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(arguments)
        errors = [
            {"loc": ".".join(str(p) for p in error.absolute_path) or "(arguments)",
             "msg": error.message[:300]}
            for error in validator.iter_errors(values)
        ][:20]  # fmt: skip
        if errors:
            summary = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors)
            raise ToolValidationError(
                f"invalid arguments for {name}: {summary}", details={"errors": errors}
            )
        return {"arguments": values}

    return check


def result_of(server: str, tool: str, result: Any) -> Any:
    """What an MCP ``CallToolResult`` gives the model: the structured content if any (and
    not over ``MAX_RESULT_CHARS`` as JSON), else the text, cut there; ``ToolError`` when
    the server says the call failed."""
    texts = [str(getattr(part, "text", "")) for part in result.content if hasattr(part, "text")]
    others = [getattr(part, "type", "?") for part in result.content if not hasattr(part, "text")]
    text = "\n".join(texts)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + " …(cut)"
    if result.is_error:
        raise ToolError(f"{server}: {text or 'the tool failed'}"[:2000])
    structured = getattr(result, "structured_content", None)
    if structured is not None and len(orjson.dumps(structured)) <= MAX_RESULT_CHARS:
        return structured  # larger: its text, cut, stands in for it
    if others:
        return {"text": text, "omitted": others}
    return text


def mcp_tool(server: McpServer, spec: Any) -> Tool:
    """The Atoll tool for one of ``server``'s tools (``spec``: an MCP ``Tool``)."""
    remote = str(spec.name)
    name = f"{server.name}{SEPARATOR}{remote}"
    schema = dict(spec.input_schema or {"type": "object"})
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})

    async def call(arguments: dict[str, Any], context: ToolContext) -> Any:
        key = ("mcp", server.name)
        session = context.scope.get(key)
        if session is None or session.broken:
            context.scope.drop(key)
            if session is not None:
                await session.aclose()
            session = McpSession(server)
            context.scope.keep(key, session)
        try:
            result = await session.call(remote, arguments)
        except ToolError:
            raise
        except Exception as exc:  # a crash, a closed pipe, a protocol error: the tool's failure
            logger.warning("MCP server %s failed on %s: %r", server.name, remote, exc)
            raise ToolError(
                f"the MCP server {server.name!r} failed ({type(exc).__name__})"
            ) from None
        return result_of(server.name, remote, result)

    return Tool(
        name=name,
        description=(spec.description or f"{remote} (MCP server {server.name})")[:1024],
        fn=call,
        parameters=schema,
        arguments_model=_Unchecked,
        context_parameter="context",
        timeout=server.timeout,
        plans=server.plans,
        roles=server.roles,
        check=_checker(name, schema),
    )


def unreachable(name: str, exc: Exception, report: TransportReport) -> str:
    """Why a server could not be listed: its transport's words (an exit status and the end
    of its stderr) rather than the task group wrapping them."""
    reason = report.fault.message if report.fault is not None else f"{type(exc).__name__}: {exc}"
    stderr = f"; its stderr ends:\n{report.stderr}" if report.stderr else ""
    return f"MCP server {name!r} could not be reached to list its tools: {reason}{stderr}"


async def discover_mcp_tools(servers: list[McpServer]) -> list[Tool]:
    """Every configured server's tools (``ConfigurationError`` naming one that fails)."""
    import anyio
    from mcp_types import PaginatedRequestParams

    tools: list[Tool] = []
    for server in servers:
        report = TransportReport()
        try:
            with anyio.fail_after(DISCOVERY_TIMEOUT):
                async with server.session(report) as session:
                    listed = []
                    cursor: str | None = None
                    for _ in range(100):  # pages, bounded
                        params = PaginatedRequestParams(cursor=cursor) if cursor else None
                        page = await session.list_tools(params=params)
                        listed.extend(page.tools)
                        cursor = page.next_cursor
                        if not cursor:
                            break
        except Exception as exc:
            raise ConfigurationError(unreachable(server.name, exc, report)) from exc
        for spec in listed:
            if server.tools is not None and spec.name not in server.tools:
                continue
            tool = mcp_tool(server, spec)
            if not TOOL_NAME.match(tool.name):
                logger.warning("MCP server %s: tool %r skipped (name)", server.name, spec.name)
                continue
            tools.append(tool)
        logger.info("MCP server %s: %d tool(s)", server.name, len(listed))
    return tools
