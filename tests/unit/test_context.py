"""UserExecutionContext: every validation rule, immutability, child, scoped_key, audit_trail."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from atoll.errors import InvalidContextError
from atoll.runtime.context import (
    MAX_CONTEXT_DEPTH,
    PLACEHOLDER_VALUES,
    RESERVED_METADATA_KEYS,
    UserExecutionContext,
)

from support import make_context

pytestmark = pytest.mark.unit

ID_FIELDS = {"user_id": "usr_", "thread_id": "thr_", "run_id": "run_", "request_id": "req_"}


def test_valid_context_is_built() -> None:
    ctx = make_context(plan="pro", roles={"admin"})
    assert ctx.user_id.startswith("usr_")
    assert ctx.roles == frozenset({"admin"})
    assert ctx.depth == 0
    assert ctx.created_at.tzinfo is not None


@pytest.mark.parametrize("field", sorted(ID_FIELDS))
def test_empty_id_refused(field: str) -> None:
    with pytest.raises(InvalidContextError, match="must not be empty"):
        make_context(**{field: ""})


@pytest.mark.parametrize("field", sorted(ID_FIELDS))
def test_wrong_prefix_refused(field: str) -> None:
    other = "abc_Zk3kq9"
    with pytest.raises(InvalidContextError, match="must start with"):
        make_context(**{field: other})


@pytest.mark.parametrize("field", sorted(ID_FIELDS))
@pytest.mark.parametrize("value", sorted(PLACEHOLDER_VALUES))
def test_placeholder_values_refused(field: str, value: str) -> None:
    with pytest.raises(InvalidContextError, match="placeholder"):
        make_context(**{field: value})
    with pytest.raises(InvalidContextError, match="placeholder"):
        make_context(**{field: ID_FIELDS[field] + value})
    with pytest.raises(InvalidContextError, match="placeholder"):
        make_context(**{field: value.upper()})


@pytest.mark.parametrize("field", sorted(ID_FIELDS))
@pytest.mark.parametrize("value", [{"id": "usr_x"}, 42, None, b"usr_abc"])
def test_non_string_ids_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidContextError, match="must be a string"):
        make_context(**{field: value})


@pytest.mark.parametrize("body", ["", "has space", "a/b", "x" * 129, "ünïcode"])
def test_id_body_must_be_url_safe(body: str) -> None:
    with pytest.raises(InvalidContextError):
        make_context(user_id="usr_" + body)


@pytest.mark.parametrize("key", sorted(RESERVED_METADATA_KEYS))
@pytest.mark.parametrize("field", ["agent_context", "audit"])
def test_reserved_metadata_keys_refused(key: str, field: str) -> None:
    with pytest.raises(InvalidContextError, match="reserved key"):
        make_context(**{field: {key: "x"}})


def test_metadata_is_deep_copied_and_read_only() -> None:
    source = {"tags": ["a"], "nested": {"k": 1}}
    ctx = make_context(agent_context=source, audit={"ip": "127.0.0.1"})
    source["tags"].append("b")
    source["nested"]["k"] = 2
    assert ctx.agent_context["tags"] == ["a"]
    assert ctx.agent_context["nested"] == {"k": 1}
    with pytest.raises(TypeError):
        ctx.agent_context["new"] = 1  # type: ignore[index]


def test_metadata_must_be_mapping_with_string_keys() -> None:
    with pytest.raises(InvalidContextError, match="mapping"):
        make_context(audit=["not", "a", "mapping"])
    with pytest.raises(InvalidContextError, match="keys must be strings"):
        make_context(audit={1: "x"})


def test_frozen() -> None:
    ctx = make_context()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.user_id = "usr_other"  # type: ignore[misc]


def test_plan_roles_and_connection_validated() -> None:
    with pytest.raises(InvalidContextError, match="plan"):
        make_context(plan="")
    with pytest.raises(InvalidContextError, match="roles"):
        make_context(roles="admin")
    with pytest.raises(InvalidContextError, match="roles"):
        make_context(roles={""})
    with pytest.raises(InvalidContextError, match="connection_id"):
        make_context(connection_id="default")
    assert make_context(connection_id="con_abc123").connection_id == "con_abc123"
    with pytest.raises(InvalidContextError, match="timezone-aware"):
        make_context(created_at=datetime(2026, 1, 1))


def test_child_derives_new_request_and_depth() -> None:
    ctx = make_context(audit={"origin": "ws"})
    child = ctx.child("agent:assistant")
    assert child.user_id == ctx.user_id and child.run_id == ctx.run_id
    assert child.thread_id == ctx.thread_id
    assert child.request_id != ctx.request_id and child.request_id.startswith("req_")
    assert child.parent_request_id == ctx.request_id
    assert child.depth == 1 and child.operation == "agent:assistant"
    assert child.audit == {"origin": "ws"}


def test_child_depth_limit() -> None:
    ctx = make_context()
    for _ in range(MAX_CONTEXT_DEPTH):
        ctx = ctx.child("nested")
    assert ctx.depth == MAX_CONTEXT_DEPTH
    with pytest.raises(InvalidContextError, match="depth limit"):
        ctx.child("one too many")
    with pytest.raises(InvalidContextError, match="depth"):
        make_context(depth=MAX_CONTEXT_DEPTH + 1)


def test_scoped_key_always_contains_user() -> None:
    a, b = make_context(), make_context()
    assert a.user_id in a.scoped_key("tools")
    assert a.scoped_key("tools") != b.scoped_key("tools")
    with pytest.raises(InvalidContextError):
        a.scoped_key("")


def test_audit_trail() -> None:
    ctx = make_context(plan="pro", roles={"b", "a"}, audit={"ip": "127.0.0.1"})
    trail = ctx.audit_trail()
    assert trail["user_id"] == ctx.user_id
    assert trail["run_id"] == ctx.run_id
    assert trail["roles"] == ["a", "b"]
    assert trail["audit"] == {"ip": "127.0.0.1"}
    trail["audit"]["ip"] = "changed"
    assert ctx.audit["ip"] == "127.0.0.1"
    assert isinstance(UserExecutionContext, type)
