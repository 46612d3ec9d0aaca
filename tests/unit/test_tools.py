"""Tools: schema from type hints, validation, permissions, timeout, rate limit, events."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import pytest

from atoll.bus.memory import InMemoryEventBus, InMemoryRunEventLog
from atoll.errors import ToolError
from atoll.ratelimit import LocalRateLimiter
from atoll.runtime.events import EventRecorder, EventType, RunEmitter, RunEvent
from atoll.runtime.tools.base import Tool, ToolContext, tool
from atoll.runtime.tools.calculator import calculator, evaluate
from atoll.runtime.tools.clock import current_time
from atoll.runtime.tools.dispatcher import ToolDispatcher
from atoll.runtime.tools.knowledge import KnowledgeBase, knowledge_search

from support import make_context

pytestmark = pytest.mark.unit


@tool
async def greet(
    name: Annotated[str, "Who to greet"],
    times: int = 1,
    style: Literal["plain", "loud"] = "plain",
    tags: list[str] | None = None,
) -> str:
    """Greet someone.

    Longer explanation that is not part of the description.
    """
    text = f"hello {name}" * times
    return text.upper() if style == "loud" else text


@tool(name="admin_only", roles=["admin"])
async def admin_tool() -> str:
    """Only admins."""
    return "secret"


@tool(name="pro_only", plans=["pro", "team"])
async def pro_tool() -> str:
    """Only paid plans."""
    return "pro"


@tool(name="slow", timeout=0.05)
async def slow_tool(seconds: float) -> str:
    """Sleeps."""
    await asyncio.sleep(seconds)
    return "done"


@tool(name="broken")
async def broken_tool() -> str:
    """Raises an unexpected error."""
    raise KeyError("internal detail")


@tool(name="refuses")
async def refusing_tool() -> str:
    """Raises a ToolError."""
    raise ToolError("cannot do that")


@tool(name="whoami")
async def whoami(ctx: ToolContext) -> dict[str, Any]:
    """Reports the caller."""
    return {"user": ctx.user.user_id, "call": ctx.call_id}


@tool(name="not_json")
async def not_json() -> Any:
    """Returns something that is not JSON."""
    return object()


ALL = [greet, admin_tool, pro_tool, slow_tool, broken_tool, refusing_tool, whoami, not_json]


def test_schema_from_type_hints() -> None:
    assert greet.name == "greet"
    assert greet.description == "Greet someone."
    assert greet.parameters == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "description": "Who to greet"},
            "times": {"type": "integer", "default": 1},
            "style": {"type": "string", "enum": ["plain", "loud"], "default": "plain"},
            "tags": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                "default": None,
            },
        },
        "required": ["name"],
    }
    assert "ctx" not in whoami.parameters["properties"]
    assert whoami.context_parameter == "ctx"


def test_decorator_refuses_what_it_cannot_describe() -> None:
    def sync_fn(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="module level"):
        tool(sync_fn)  # a CPU-bound tool must be importable by the worker process

    async def untyped(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(TypeError, match="type hint"):
        tool(description="x")(untyped)

    async def undocumented(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="description"):
        tool(undocumented)


class Harness:
    def __init__(self, *, plan: str = "free", roles: frozenset[str] = frozenset(),
                 limiter: LocalRateLimiter | None = None) -> None:  # fmt: skip
        self.log = InMemoryRunEventLog()
        self.context = make_context(plan=plan, roles=roles)
        emitter = RunEmitter(
            EventRecorder(self.log, InMemoryEventBus()),
            user_id=self.context.user_id,
            run_id=self.context.run_id,
            thread_id=self.context.thread_id,
            message_id="msg_x",
        )
        self.dispatcher = ToolDispatcher(
            context=self.context,
            tools={t.name: t for t in ALL},
            emitter=emitter.for_agent("assistant", None),
            rate_limiter=limiter,
            default_timeout=5,
        )

    async def events(self) -> list[RunEvent]:
        return await self.log.read(self.context.run_id, user_id=self.context.user_id)


async def completed(h: Harness) -> dict[str, Any]:
    events = await h.events()
    assert [e.type for e in events] == [EventType.TOOL_EXECUTING, EventType.TOOL_COMPLETED]
    assert events[0].data["call_id"] == events[1].data["call_id"]
    assert events[1].data["duration_ms"] >= 0
    return dict(events[1].data)


async def test_success_emits_executing_then_completed() -> None:
    h = Harness()
    result = await h.dispatcher.call("greet", {"name": "Ada", "times": 2}, call_id="call_1")
    assert result.ok
    assert result.result == "hello Adahello Ada"
    data = await completed(h)
    assert data["ok"] is True
    assert data["result"] == "hello Adahello Ada"
    assert data["call_id"] == "call_1"
    first = (await h.events())[0].data
    assert first["args"] == {"name": "Ada", "times": 2}
    assert first["tool"] == "greet"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [({}, "name"), ({"name": 3}, "name"), ({"name": "a", "times": "x"}, "times"),
     ({"name": "a", "style": "quiet"}, "style"), ({"name": "a", "extra": 1}, "extra")],
)  # fmt: skip
async def test_validation_errors_name_the_field(arguments: dict[str, Any], field: str) -> None:
    h = Harness()
    result = await h.dispatcher.call("greet", arguments)
    assert not result.ok
    assert result.error is not None
    assert result.error["code"] == "invalid_arguments"
    assert field in [e["loc"] for e in result.error["errors"]]
    data = await completed(h)
    assert data["ok"] is False
    assert data["error"]["code"] == "invalid_arguments"


async def test_invalid_json_arguments() -> None:
    h = Harness()
    result = await h.dispatcher.call("greet", '{"name": ')
    assert result.error is not None
    assert result.error["code"] == "invalid_arguments"
    result = await h.dispatcher.call("greet", "[1, 2]")
    assert result.error is not None
    assert result.error["code"] == "invalid_arguments"


async def test_unknown_tool() -> None:
    h = Harness()
    result = await h.dispatcher.call("nope", {})
    assert result.error is not None
    assert result.error["code"] == "unknown_tool"
    assert (await completed(h))["ok"] is False


async def test_role_permission() -> None:
    h = Harness()
    assert "admin_only" not in h.dispatcher.names()
    result = await h.dispatcher.call("admin_only", {})
    assert result.error is not None
    assert result.error["code"] == "tool_forbidden"
    admin = Harness(roles=frozenset({"admin"}))
    assert "admin_only" in admin.dispatcher.names()
    assert (await admin.dispatcher.call("admin_only", {})).result == "secret"


async def test_plan_permission() -> None:
    assert (await Harness(plan="free").dispatcher.call("pro_only", {})).error["code"] == (  # type: ignore[index]
        "tool_forbidden"
    )
    assert (await Harness(plan="team").dispatcher.call("pro_only", {})).ok
    specs = [s.name for s in Harness(plan="pro").dispatcher.specs()]
    assert "pro_only" in specs
    assert "admin_only" not in specs


async def test_timeout_emits_completed_with_error() -> None:
    h = Harness()
    result = await h.dispatcher.call("slow", {"seconds": 5})
    assert result.error is not None
    assert result.error["code"] == "tool_timeout"
    data = await completed(h)
    assert data["error"]["code"] == "tool_timeout"
    assert data["duration_ms"] < 4000


async def test_unexpected_exception_is_reported_without_internals() -> None:
    h = Harness()
    result = await h.dispatcher.call("broken", {})
    assert result.error == {"code": "tool_error", "message": "broken failed (KeyError)"}
    assert "internal detail" not in str(await completed(h))
    refused = await h.dispatcher.call("refuses", {})
    assert refused.error == {"code": "tool_error", "message": "cannot do that"}


async def test_non_json_result_is_an_error() -> None:
    h = Harness()
    result = await h.dispatcher.call("not_json", {})
    assert result.error is not None
    assert result.error["code"] == "tool_error"


async def test_context_injection() -> None:
    h = Harness()
    result = await h.dispatcher.call("whoami", {}, call_id="call_me")
    assert result.result == {"user": h.context.user_id, "call": "call_me"}


async def test_per_user_rate_limit() -> None:
    limiter = LocalRateLimiter(2, 60)
    h = Harness(limiter=limiter)
    assert (await h.dispatcher.call("greet", {"name": "a"})).ok
    assert (await h.dispatcher.call("greet", {"name": "a"})).ok
    limited = await h.dispatcher.call("greet", {"name": "a"})
    assert limited.error is not None
    assert limited.error["code"] == "rate_limited"
    assert limited.error["retry_after"] > 0
    other_user = Harness(limiter=limiter)
    assert (await other_user.dispatcher.call("greet", {"name": "a"})).ok


async def test_cancellation_mid_tool_closes_the_tool_card() -> None:
    h = Harness()
    task = asyncio.create_task(h.dispatcher.call("slow", {"seconds": 0.04}))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    data = await completed(h)
    assert data["error"]["code"] == "cancelled"


@pytest.mark.parametrize(
    ("expression", "value"),
    [("17*23", 391), ("2 + 3 * 4", 14), ("(3+4)*2", 14), ("2^10", 1024), ("7 / 2", 3.5),
     ("-5 % 3", 1), ("sqrt(16) + 2", 6.0), ("max(1, 9, 4)", 9), ("3 × 4 ÷ 6", 2.0)],
)  # fmt: skip
def test_calculator_evaluates(expression: str, value: float) -> None:
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    ("expression", "message"),
    [("__import__('os').system('true')", "unsupported"), ("open('x')", "unsupported"),
     ("1/0", "division by zero"), ("9**9**9", "exponent"), ("2**9999 * 2**9999 * 2**9999",
     "too large"), ("abc", "unsupported"), ("", "empty"), ("1 +", "not an arithmetic"),
     ("True + 1", "unsupported"), ("'a' * 3", "unsupported"), ("1" * 600, "longer than"),
     ("(lambda: 1)()", "unsupported"), ("sqrt(-1)", "sqrt"),
     ("(-8)**0.5", "not a real number"), ("(-8)**0.5 * 0", "not a real number")],
)  # fmt: skip
def test_calculator_refuses(expression: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        evaluate(expression)


async def test_builtin_tools_run() -> None:
    assert calculator.fn(expression="17*23") == {"expression": "17*23", "value": 391}
    now = await current_time.fn(timezone="Asia/Tokyo")
    assert now["timezone"] == "Asia/Tokyo"
    assert now["iso"].endswith("+09:00")
    with pytest.raises(ToolError, match="unknown time zone"):
        await current_time.fn(timezone="Mars/Olympus")


async def test_knowledge_search_over_handbook_and_operator_directory(tmp_path: Any) -> None:
    (tmp_path / "faq.md").write_text(
        "# Refund policy\n\nRefunds are granted within 30 days of purchase.\n", encoding="utf-8"
    )
    (tmp_path / "image.png").write_bytes(b"\x89PNG not a document")
    base = KnowledgeBase([tmp_path])
    context = ToolContext(user=make_context(), call_id="call_k", resources={KnowledgeBase: base})
    found = await knowledge_search.fn(context, query="refund purchase days")
    assert found["hits"][0]["source"] == "faq.md"
    assert "30 days" in found["hits"][0]["snippet"]
    handbook = await knowledge_search.fn(context, query="How do plugins work?")
    assert handbook["hits"][0]["title"] == "Plugins"
    nothing = await knowledge_search.fn(context, query="zyxwv")
    assert nothing["hits"] == []


def test_tool_is_a_value_not_a_registration() -> None:
    assert isinstance(greet, Tool)
    assert greet.allows(make_context())
