"""How a run ends: the one definition of its terminal state, event and error.

The engine ending a run it executes, the store ending a run nothing executes
(a cancel while queued, the sweeper, recovery after a crash) and workers all
build the end of a run here, so the terminal event's data and the error
recorded on the run have one shape, and every code comes from its error class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from atoll.errors import (
    AtollError,
    QueueTimeoutError,
    RunDeadError,
    RunInterruptedError,
    RunTimeoutError,
    WorkerLostError,
)
from atoll.runtime.events import EventType, RunEvent
from atoll.runtime.state import ExecutionState

RUN_TIMEOUT = RunTimeoutError.code
RUN_DEAD = RunDeadError.code
WORKER_LOST = WorkerLostError.code
QUEUE_TIMEOUT = QueueTimeoutError.code
INTERRUPTED = RunInterruptedError.code
INTERNAL_ERROR = AtollError.code


@dataclass(frozen=True, slots=True)
class Ending:
    """How a run ends: its state, its terminal event's type and data, the recorded error."""

    state: ExecutionState
    event_type: EventType
    data: dict[str, Any]
    error: dict[str, Any] | None

    @classmethod
    def failure(cls, state: ExecutionState, code: str, message: str) -> Ending:
        """An ``agent_error`` ending (failed, timeout or dead)."""
        error = {"code": code, "message": message}
        return cls(state, EventType.AGENT_ERROR, {"state": state.value, **error}, error)

    @classmethod
    def of_error(cls, state: ExecutionState, error: Mapping[str, Any] | None) -> Ending:
        """The ``agent_error`` ending of ``state`` for an error dict (its extra keys, such as
        a budget's ``scope``, in the event too: the run's recorded error is derived from it)."""
        details = dict(error or {"code": state.value, "message": f"run {state.value}"})
        details["code"] = str(details.get("code", state.value))
        details["message"] = str(details.get("message", ""))
        details.pop("state", None)
        return cls(state, EventType.AGENT_ERROR, {"state": state.value, **details}, details)

    @classmethod
    def cancelled(cls, reason: str) -> Ending:
        """An ``agent_cancelled`` ending."""
        return cls(ExecutionState.CANCELLED, EventType.AGENT_CANCELLED, {"reason": reason}, None)


def terminal_state_of(event: RunEvent) -> tuple[str, dict[str, Any] | None]:
    """The state and error a run's terminal ``event`` stands for."""
    if event.type is EventType.AGENT_COMPLETED:
        return ExecutionState.COMPLETED.value, None
    if event.type is EventType.AGENT_CANCELLED:
        return ExecutionState.CANCELLED.value, None
    data = dict(event.data)
    return str(data.pop("state", ExecutionState.FAILED.value)), data
