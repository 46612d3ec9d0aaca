"""``UserExecutionContext``: the immutable, validated identity of one request.

Every run executes under exactly one context; nothing in the runtime reads the
user from anywhere else. Values are validated at construction so that a
placeholder (``"default"``, ``"test"``) or a wrongly-typed id can never travel
deeper into the system and silently merge two users' data.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from atoll.errors import AgentDepthError, InvalidContextError
from atoll.runtime.ids import new_id

PLACEHOLDER_VALUES = frozenset(
    {
        "registry",
        "placeholder",
        "default",
        "none",
        "null",
        "undefined",
        "test",
        "demo",
        "mock",
        "fake",
        "dummy",
        "example",
        "temp",
        "0",
        "1",
    }
)
RESERVED_METADATA_KEYS = frozenset({"user_id", "thread_id", "run_id", "request_id", "created_at"})
MAX_CONTEXT_DEPTH = 10

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_ID_BODY = re.compile(r"[A-Za-z0-9_-]{1,128}")
_ID_FIELDS = (
    ("user_id", "usr_"),
    ("thread_id", "thr_"),
    ("run_id", "run_"),
    ("request_id", "req_"),
)


def _frozen_copy(name: str, value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not value:
        if value is None or isinstance(value, Mapping):
            return _EMPTY
        raise InvalidContextError(f"{name} must be a mapping, not {type(value).__name__}")
    if not isinstance(value, Mapping):
        raise InvalidContextError(f"{name} must be a mapping, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise InvalidContextError(f"{name} keys must be strings, got {key!r}")
        if key in RESERVED_METADATA_KEYS:
            raise InvalidContextError(
                f"{name} may not use the reserved key {key!r}", details={"field": name}
            )
    return MappingProxyType(copy.deepcopy(dict(value)))


def _check_id(name: str, value: Any, prefix: str) -> None:
    if not isinstance(value, str):
        raise InvalidContextError(
            f"{name} must be a string, not {type(value).__name__}", details={"field": name}
        )
    if not value:
        raise InvalidContextError(f"{name} must not be empty", details={"field": name})
    if value.strip().lower() in PLACEHOLDER_VALUES:
        raise InvalidContextError(
            f"{name} is a placeholder value ({value!r})", details={"field": name}
        )
    if not value.startswith(prefix):
        raise InvalidContextError(
            f"{name} must start with {prefix!r} (got {value!r})", details={"field": name}
        )
    body = value[len(prefix) :]
    if body.lower() in PLACEHOLDER_VALUES:
        raise InvalidContextError(
            f"{name} is a placeholder value ({value!r})", details={"field": name}
        )
    if not _ID_BODY.fullmatch(body):
        raise InvalidContextError(
            f"{name} must be {prefix!r} followed by 1-128 URL-safe characters",
            details={"field": name},
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class UserExecutionContext:
    """Who runs what: user, thread, run and request ids plus plan, roles and metadata.

    Frozen and validated on construction; ``agent_context`` and ``audit`` are
    deep-copied into read-only mappings so the caller cannot change them later.
    """

    user_id: str
    thread_id: str
    run_id: str
    request_id: str
    plan: str = "free"
    roles: frozenset[str] = frozenset()
    connection_id: str | None = None
    org_id: str | None = None
    """The user's organisation, if any (what it allows is already in ``plan``)."""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    agent_context: Mapping[str, Any] = field(default_factory=dict)
    audit: Mapping[str, Any] = field(default_factory=dict)
    depth: int = 0
    parent_request_id: str | None = None
    operation: str | None = None

    def __post_init__(self) -> None:
        for name, prefix in _ID_FIELDS:
            _check_id(name, getattr(self, name), prefix)
        if not isinstance(self.plan, str) or not self.plan.strip():
            raise InvalidContextError("plan must be a non-empty string", details={"field": "plan"})
        roles = self.roles
        if isinstance(roles, str) or not all(isinstance(r, str) and r for r in roles):
            raise InvalidContextError(
                "roles must be a collection of non-empty strings", details={"field": "roles"}
            )
        object.__setattr__(self, "roles", frozenset(roles))
        if self.connection_id is not None:
            _check_id("connection_id", self.connection_id, "con_")
        if self.org_id is not None and not (isinstance(self.org_id, str) and self.org_id):
            raise InvalidContextError(
                "org_id must be a non-empty string", details={"field": "org_id"}
            )
        if self.parent_request_id is not None:
            _check_id("parent_request_id", self.parent_request_id, "req_")
        if not isinstance(self.created_at, datetime) or self.created_at.tzinfo is None:
            raise InvalidContextError(
                "created_at must be a timezone-aware datetime", details={"field": "created_at"}
            )
        if not isinstance(self.depth, int) or isinstance(self.depth, bool):
            raise InvalidContextError("depth must be an int", details={"field": "depth"})
        if not 0 <= self.depth <= MAX_CONTEXT_DEPTH:
            raise InvalidContextError(
                f"depth must be between 0 and {MAX_CONTEXT_DEPTH}", details={"field": "depth"}
            )
        object.__setattr__(self, "agent_context", _frozen_copy("agent_context", self.agent_context))
        object.__setattr__(self, "audit", _frozen_copy("audit", self.audit))

    def child(self, operation: str) -> UserExecutionContext:
        """A context for a sub-agent: same user, thread and run; new request, depth + 1."""
        if not isinstance(operation, str) or not operation:
            raise InvalidContextError("operation must be a non-empty string")
        if self.depth >= MAX_CONTEXT_DEPTH:
            raise AgentDepthError(
                f"sub-agent depth limit of {MAX_CONTEXT_DEPTH} reached", details={"field": "depth"}
            )
        return replace(
            self,
            request_id=new_id("req"),
            depth=self.depth + 1,
            parent_request_id=self.request_id,
            operation=operation,
            created_at=datetime.now(UTC),
        )

    def scoped_key(self, component: str) -> str:
        """A cache or lock key for ``component`` that always contains the user id."""
        if not isinstance(component, str) or not component:
            raise InvalidContextError("component must be a non-empty string")
        return f"user:{self.user_id}:{component}"

    def audit_trail(self) -> dict[str, Any]:
        """This context as a plain dict for the audit log."""
        return {
            "user_id": self.user_id,
            "thread_id": self.thread_id,
            "run_id": self.run_id,
            "request_id": self.request_id,
            "parent_request_id": self.parent_request_id,
            "connection_id": self.connection_id,
            "operation": self.operation,
            "depth": self.depth,
            "plan": self.plan,
            "roles": sorted(self.roles),
            "created_at": self.created_at.isoformat(),
            "audit": copy.deepcopy(dict(self.audit)),
        }
