"""The one definition of a run's lifecycle: ``ExecutionState`` and its transition table."""

from __future__ import annotations

from enum import Enum
from typing import Any

from atoll.errors import IllegalTransitionError


class ExecutionState(Enum):
    """The nine states of a run. The first four are alive, the last five terminal."""

    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETING = "completing"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def is_alive(self) -> bool:
        """True for PENDING, STARTING, RUNNING and COMPLETING."""
        return self in _ALIVE

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED, FAILED, TIMEOUT, DEAD and CANCELLED."""
        return not self.is_alive

    def can_transition_to(self, target: ExecutionState) -> bool:
        """Whether the table allows moving from this state to ``target``."""
        return _require_state(target, "target") in _TRANSITIONS[self]

    @classmethod
    def parse(cls, value: str) -> ExecutionState:
        """The state named by its wire value (``"running"``); ``ValueError`` otherwise."""
        if not isinstance(value, str):
            raise TypeError(f"state name must be a str, not {type(value).__name__}")
        return cls(value.lower())


_ALIVE = frozenset(
    {
        ExecutionState.PENDING,
        ExecutionState.STARTING,
        ExecutionState.RUNNING,
        ExecutionState.COMPLETING,
    }
)

_TRANSITIONS: dict[ExecutionState, frozenset[ExecutionState]] = {
    ExecutionState.PENDING: frozenset(
        {ExecutionState.STARTING, ExecutionState.CANCELLED, ExecutionState.FAILED}
    ),
    ExecutionState.STARTING: frozenset(
        {
            ExecutionState.RUNNING,
            ExecutionState.FAILED,
            ExecutionState.TIMEOUT,
            ExecutionState.DEAD,
            ExecutionState.CANCELLED,
        }
    ),
    ExecutionState.RUNNING: frozenset(
        {
            ExecutionState.COMPLETING,
            ExecutionState.FAILED,
            ExecutionState.TIMEOUT,
            ExecutionState.DEAD,
            ExecutionState.CANCELLED,
        }
    ),
    ExecutionState.COMPLETING: frozenset(
        {ExecutionState.COMPLETED, ExecutionState.FAILED, ExecutionState.DEAD}
    ),
    ExecutionState.COMPLETED: frozenset(),
    ExecutionState.FAILED: frozenset(),
    ExecutionState.TIMEOUT: frozenset(),
    ExecutionState.DEAD: frozenset(),
    ExecutionState.CANCELLED: frozenset(),
}

ALIVE_STATES = _ALIVE


def _require_state(value: Any, name: str) -> ExecutionState:
    if not isinstance(value, ExecutionState):
        raise TypeError(f"{name} must be an ExecutionState, not {type(value).__name__}: {value!r}")
    return value


def check_transition(current: ExecutionState, target: ExecutionState) -> None:
    """Raise unless ``current -> target`` is legal.

    ``TypeError`` when either side is not an ``ExecutionState`` (a dict, a string);
    ``IllegalTransitionError`` when the table forbids the move.
    """
    _require_state(current, "current state")
    _require_state(target, "target state")
    if target not in _TRANSITIONS[current]:
        raise IllegalTransitionError(
            f"illegal run state transition {current.name} -> {target.name}",
            details={"from": current.value, "to": target.value},
        )
