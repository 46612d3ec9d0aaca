"""The per-run unified tool dispatcher.

One dispatcher is built for every agent invocation of a run. Every call goes
through the same steps: ``tool_executing`` is emitted, then the tool is looked
up, permission-checked, rate-limited, validated and run under a timeout, and
``tool_completed`` is emitted with ``ok``, the result or the error, and the
duration — on success, on error, on timeout and on cancellation alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Any, cast

import orjson

from atoll.errors import (
    AtollError,
    RateLimitedError,
    RunClosedError,
    ToolError,
    ToolNotFoundError,
    ToolPermissionError,
    ToolTimeoutError,
    ToolValidationError,
)
from atoll.ratelimit import RateLimiter
from atoll.runtime.context import UserExecutionContext
from atoll.runtime.events import AgentEmitter, EventType, preview
from atoll.runtime.ids import new_id
from atoll.runtime.llm.base import ToolSpec
from atoll.runtime.plans import Plan
from atoll.runtime.tools.base import Tool, ToolContext, ToolResult, ToolScope
from atoll.runtime.tools.processes import ToolProcessPool
from atoll.telemetry import NoTracing, Tracing

logger = logging.getLogger(__name__)


class ToolDispatcher:
    """Runs tool calls for one agent of one run, emitting their events."""

    def __init__(
        self,
        *,
        context: UserExecutionContext,
        tools: Mapping[str, Tool],
        emitter: AgentEmitter,
        rate_limiter: RateLimiter | None = None,
        default_timeout: float = 30.0,
        resources: Mapping[type, object] | None = None,
        processes: ToolProcessPool | None = None,
        plan: Plan | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._context = context
        self._tracing = tracing or NoTracing()
        self._scope = ToolScope()
        self._plan = plan
        self._tools = dict(tools)
        self._emitter = emitter
        self._rate_limiter = rate_limiter
        self._default_timeout = default_timeout
        self._resources = dict(resources or {})
        self._processes = processes

    async def aclose(self) -> None:
        """Close what this invocation's tool calls opened (``ToolScope``)."""
        await self._scope.aclose()

    def specs(self) -> list[ToolSpec]:
        """The tools this user may call, as model-facing specs."""
        return [t.spec() for t in self._tools.values() if t.allows(self._context, self._plan)]

    def names(self) -> list[str]:
        """Names of the tools this user may call."""
        return [t.name for t in self._tools.values() if t.allows(self._context, self._plan)]

    async def call(
        self, name: str, arguments: Mapping[str, Any] | str, *, call_id: str | None = None
    ) -> ToolResult:
        """Call tool ``name``; never raises for tool failures, only for cancellation."""
        call_id = call_id or new_id("call")
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": call_id,
        }
        with self._tracing.span(f"execute_tool {name}", attributes) as span:
            result = await self._call(name, arguments, call_id)
            if not result.ok:
                span.fail(str((result.error or {}).get("code", "tool_error")))
            return result

    async def _call(
        self, name: str, arguments: Mapping[str, Any] | str, call_id: str
    ) -> ToolResult:
        started = time.perf_counter()
        shown_args: Any = arguments
        try:
            parsed = self._parse(arguments)
            shown_args = parsed
        except ToolValidationError as exc:
            parsed = None
            failure: AtollError | None = exc
        else:
            failure = None
        await self._emitter.emit(
            EventType.TOOL_EXECUTING,
            {"call_id": call_id, "tool": name, "args": preview(shown_args)},
        )
        try:
            if failure is not None:
                raise failure
            assert parsed is not None
            value = await self._run(name, parsed, call_id)
        except asyncio.CancelledError:
            await self._complete_quietly(
                call_id,
                name,
                started,
                error={
                    "code": "cancelled",
                    "message": "the run was cancelled during the tool call",
                },
            )
            raise
        except ToolError as exc:
            return await self._complete(call_id, name, started, error=exc.to_dict())
        except AtollError as exc:
            return await self._complete(call_id, name, started, error=exc.to_dict())
        except Exception as exc:
            logger.exception(
                "tool %s raised (call %s, run %s)", name, call_id, self._context.run_id
            )
            error = {"code": "tool_error", "message": f"{name} failed ({type(exc).__name__})"}
            return await self._complete(call_id, name, started, error=error)
        return await self._complete(call_id, name, started, result=value)

    @staticmethod
    def _parse(arguments: Mapping[str, Any] | str) -> dict[str, Any]:
        if isinstance(arguments, str):
            try:
                value = orjson.loads(arguments or "{}")
            except orjson.JSONDecodeError as exc:
                raise ToolValidationError(f"arguments are not valid JSON: {exc}") from None
        else:
            value = arguments
        if not isinstance(value, Mapping):
            raise ToolValidationError("arguments must be a JSON object")
        return dict(value)

    async def _run(self, name: str, arguments: dict[str, Any], call_id: str) -> Any:
        tool = self._tools.get(name)
        if tool is None:
            raise ToolNotFoundError(f"there is no tool named {name!r}")
        if not tool.allows(self._context, self._plan):
            raise ToolPermissionError(f"your plan or roles do not allow the tool {name!r}")
        if self._rate_limiter is not None:
            retry_after = await self._rate_limiter.hit(self._context.scoped_key("tools"))
            if retry_after is not None:
                raise RateLimitedError(
                    f"tool call rate limit reached; retry in {retry_after:.1f}s",
                    retry_after=retry_after,
                )
        kwargs = tool.validate(arguments)
        if tool.context_parameter is not None:
            kwargs[tool.context_parameter] = ToolContext(
                user=self._context, call_id=call_id, resources=self._resources, scope=self._scope
            )
        timeout = tool.timeout if tool.timeout is not None else self._default_timeout
        if tool.cpu_bound:
            value = await self._invoke_in_process(tool, kwargs, timeout)
        else:
            value = await self._invoke_here(tool, kwargs, timeout)
        try:
            orjson.dumps(value)
        except TypeError:
            raise ToolError(f"{name} returned a value that is not JSON") from None
        return value

    @staticmethod
    async def _invoke_here(tool: Tool, kwargs: dict[str, Any], seconds: float) -> Any:
        """An ``async def`` tool, on the event loop (it only waits)."""
        try:
            async with asyncio.timeout(seconds):
                return await cast(Awaitable[Any], tool.fn(**kwargs))
        except TimeoutError:
            raise ToolTimeoutError(f"{tool.name} did not finish within {seconds:g}s") from None

    async def _invoke_in_process(self, tool: Tool, kwargs: dict[str, Any], seconds: float) -> Any:
        """A plain-``def`` tool, in a worker process; its timeout counts from the moment a
        ready worker is held (waiting for one is bounded by the pool) and kills the worker."""
        if self._processes is None:
            raise ToolError(f"{tool.name} is CPU-bound and no tool process pool is configured")
        async with self._processes.worker(self._context.user_id) as worker:
            try:
                async with asyncio.timeout(seconds):
                    return await worker.call(tool.fn, kwargs)
            except TimeoutError:
                raise ToolTimeoutError(f"{tool.name} did not finish within {seconds:g}s") from None

    async def _complete(
        self,
        call_id: str,
        name: str,
        started: float,
        *,
        result: Any = None,
        error: Mapping[str, Any] | None = None,
    ) -> ToolResult:
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        data: dict[str, Any] = {"call_id": call_id, "tool": name, "ok": error is None}
        if error is None:
            data["result"] = preview(result)
        else:
            data["error"] = preview(dict(error))
        data["duration_ms"] = duration_ms
        await self._emitter.emit(EventType.TOOL_COMPLETED, data)
        return ToolResult(call_id, name, error is None, result, error, duration_ms)

    async def _complete_quietly(
        self, call_id: str, name: str, started: float, *, error: Mapping[str, Any]
    ) -> None:
        """Close the tool call's timeline on cancellation; the run may already be closed."""
        try:
            await self._complete(call_id, name, started, error=error)
        except (RunClosedError, asyncio.CancelledError):
            pass
        except Exception:
            logger.exception("could not emit tool_completed for cancelled call %s", call_id)
