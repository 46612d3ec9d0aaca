"""Declaring tools: ``@tool`` on a typed function, schema from the type hints.

The decorator builds a ``Tool`` value and registers nothing: tools are added to
an ``AgentRegistry`` by whoever assembles the process (built-ins, plugins).

An ``async def`` tool runs on the event loop and must only wait (I/O), never
compute for long. A plain ``def`` tool is CPU-bound: it runs in a worker process
of the ``ToolProcessPool``, where its timeout kills it (see ``processes.py``).
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from atoll.errors import ToolValidationError
from atoll.runtime.context import UserExecutionContext
from atoll.runtime.llm.base import ToolSpec
from atoll.runtime.plans import Plan

logger = logging.getLogger(__name__)

R = TypeVar("R")
ToolFunction = Callable[..., Awaitable[Any]] | Callable[..., Any]


class ToolScope:
    """What the tool calls of one agent invocation share (an MCP session): opened by the
    first call that needs it, closed by the dispatcher when the invocation ends, never
    seen by another invocation, run or user."""

    def __init__(self) -> None:
        self._items: dict[Hashable, Any] = {}

    def get(self, key: Hashable) -> Any | None:
        """What was kept under ``key``, if anything."""
        return self._items.get(key)

    def keep(self, key: Hashable, item: Any) -> None:
        """Keep ``item`` (with an ``async aclose()``) under ``key`` until the scope closes."""
        self._items[key] = item

    def drop(self, key: Hashable) -> None:
        """Forget ``key`` (its item is broken: the next call opens another)."""
        self._items.pop(key, None)

    async def aclose(self) -> None:
        """Close every kept item, newest first; one that fails to close is logged."""
        items, self._items = list(self._items.values()), {}
        for item in reversed(items):
            try:
                await item.aclose()
            except Exception:
                logger.warning("a tool resource failed to close", exc_info=True)


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may receive besides its arguments: the user and shared resources.

    A tool asks for it by declaring a parameter annotated ``ToolContext``; that
    parameter is never part of the schema the model sees.
    """

    user: UserExecutionContext
    call_id: str
    resources: Mapping[type, object] = field(default_factory=dict)
    scope: ToolScope = field(default_factory=ToolScope)
    """Shared by the calls of this agent invocation only (see ``ToolScope``)."""

    def resource(self, kind: type[R]) -> R:
        """The shared resource of type ``kind`` (e.g. the ``KnowledgeBase``)."""
        try:
            value = self.resources[kind]
        except KeyError:
            raise LookupError(f"no {kind.__name__} resource is configured") from None
        assert isinstance(value, kind)
        return value


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one tool call, as the agent and the model see it."""

    call_id: str
    tool: str
    ok: bool
    result: Any = None
    error: Mapping[str, Any] | None = None
    duration_ms: float = 0.0

    def for_model(self) -> dict[str, Any]:
        """What is sent back to the model as the tool message."""
        if self.ok:
            return {"ok": True, "result": self.result}
        return {"ok": False, "error": dict(self.error or {})}


@dataclass(frozen=True, slots=True, eq=False)
class Tool:
    """A callable tool: name, description, parameter schema and permission rules."""

    name: str
    description: str
    fn: ToolFunction
    parameters: Mapping[str, Any]
    arguments_model: type[BaseModel]
    context_parameter: str | None = None
    timeout: float | None = None
    plans: frozenset[str] | None = None
    roles: frozenset[str] | None = None
    cpu_bound: bool = False
    """A plain ``def``: runs in a worker process that its timeout can kill."""
    check: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    """Validates the arguments instead of ``arguments_model``, for a tool whose schema is
    given rather than typed (an MCP server's); raises ``ToolValidationError``."""

    def allows(self, context: UserExecutionContext, plan: Plan | None = None) -> bool:
        """Whether the user's plan (its name, and ``plan``'s tools) and roles permit this tool."""
        if self.plans is not None and context.plan not in self.plans:
            return False
        if plan is not None and not plan.allows_tool(self.name):
            return False
        return self.roles is None or bool(self.roles & context.roles)

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Validated keyword arguments; ``ToolValidationError`` naming each bad field."""
        if self.check is not None:
            return self.check(arguments)
        try:
            model = self.arguments_model.model_validate(dict(arguments))
        except ValidationError as exc:
            errors = [
                {"loc": ".".join(str(p) for p in err["loc"]) or "(arguments)", "msg": err["msg"]}
                for err in exc.errors()
            ]
            summary = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors)
            raise ToolValidationError(
                f"invalid arguments for {self.name}: {summary}", details={"errors": errors}
            ) from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    def spec(self) -> ToolSpec:
        """The model-facing description of this tool."""
        return ToolSpec(self.name, self.description, self.parameters)


def _strip_titles(schema: Any) -> Any:
    """Remove pydantic's generated ``title`` keywords (not properties named ``title``)."""
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key == "title" and isinstance(value, str):
                continue
            if key in ("properties", "$defs") and isinstance(value, dict):
                out[key] = {name: _strip_titles(sub) for name, sub in value.items()}
            else:
                out[key] = _strip_titles(value)
        return out
    if isinstance(schema, list):
        return [_strip_titles(item) for item in schema]
    return schema


def _field_for(annotation: Any, default: Any) -> tuple[Any, Any]:
    description = None
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        description = next((e for e in extras if isinstance(e, str)), None)
        if description is not None:
            annotation = base
    required = default is inspect.Parameter.empty
    return annotation, Field(... if required else default, description=description)


def _build(
    fn: ToolFunction,
    *,
    name: str | None,
    description: str | None,
    timeout: float | None,
    plans: Iterable[str] | None,
    roles: Iterable[str] | None,
) -> Tool:
    if not inspect.isfunction(fn):
        raise TypeError(f"@tool needs a function, got {fn!r}")
    cpu_bound = not inspect.iscoroutinefunction(fn)
    if cpu_bound and "<locals>" in fn.__qualname__:
        raise TypeError(
            f"tool {fn.__qualname__}: a plain-def (CPU-bound) tool runs in another process "
            "and must be defined at module level"
        )
    tool_name = name or fn.__name__
    doc = inspect.getdoc(fn) or ""
    text = description or doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    if not text:
        raise TypeError(f"tool {tool_name} needs a description (docstring or description=)")
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    context_parameter = None
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {tool_name}: *args/**kwargs are not supported")
        annotation = hints.get(param.name)
        if annotation is None:
            raise TypeError(f"tool {tool_name}: parameter {param.name} needs a type hint")
        if annotation is ToolContext:
            if cpu_bound:
                raise TypeError(f"tool {tool_name}: a CPU-bound tool cannot take a ToolContext")
            context_parameter = param.name
            continue
        fields[param.name] = _field_for(annotation, param.default)
    model = create_model(
        f"{tool_name}_arguments",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    parameters = _strip_titles(model.model_json_schema())
    parameters.setdefault("properties", {})
    return Tool(
        name=tool_name,
        description=text,
        fn=fn,
        parameters=parameters,
        arguments_model=model,
        context_parameter=context_parameter,
        timeout=timeout,
        plans=frozenset(plans) if plans is not None else None,
        roles=frozenset(roles) if roles is not None else None,
        cpu_bound=cpu_bound,
    )


@overload
def tool(fn: ToolFunction, /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    plans: Iterable[str] | None = None,
    roles: Iterable[str] | None = None,
) -> Callable[[ToolFunction], Tool]: ...


def tool(
    fn: ToolFunction | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    plans: Iterable[str] | None = None,
    roles: Iterable[str] | None = None,
) -> Tool | Callable[[ToolFunction], Tool]:
    """Turn a typed function into a ``Tool``.

    ``async def``: runs on the event loop (for tools that wait on I/O). Plain
    ``def``: CPU-bound, runs in a worker process that its timeout kills.

    ``plans`` limits the tool to users on those plans, ``roles`` to users holding
    any of those roles; ``timeout`` overrides the dispatcher's default.
    Parameters may be ``Annotated[T, "description"]``; one parameter annotated
    ``ToolContext`` receives the caller's context instead of a model argument.
    """

    def wrap(function: ToolFunction) -> Tool:
        return _build(
            function, name=name, description=description, timeout=timeout, plans=plans, roles=roles
        )

    if fn is not None:
        return wrap(fn)
    return wrap
