"""ExecutionState: nine members, the exact transition table, typed errors."""

from __future__ import annotations

import itertools

import pytest

from atoll.errors import IllegalTransitionError
from atoll.runtime.state import ExecutionState, check_transition

pytestmark = pytest.mark.unit

S = ExecutionState
LEGAL = {
    (S.PENDING, S.STARTING),
    (S.PENDING, S.CANCELLED),
    (S.PENDING, S.FAILED),
    (S.STARTING, S.RUNNING),
    (S.STARTING, S.FAILED),
    (S.STARTING, S.TIMEOUT),
    (S.STARTING, S.DEAD),
    (S.STARTING, S.CANCELLED),
    (S.RUNNING, S.COMPLETING),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.TIMEOUT),
    (S.RUNNING, S.DEAD),
    (S.RUNNING, S.CANCELLED),
    (S.COMPLETING, S.COMPLETED),
    (S.COMPLETING, S.FAILED),
    (S.COMPLETING, S.DEAD),
}
ALL_PAIRS = list(itertools.product(ExecutionState, ExecutionState))


def test_exactly_nine_members_alive_and_terminal() -> None:
    assert [s.name for s in ExecutionState] == [
        "PENDING", "STARTING", "RUNNING", "COMPLETING",
        "COMPLETED", "FAILED", "TIMEOUT", "DEAD", "CANCELLED",
    ]  # fmt: skip
    assert {s for s in S if s.is_alive} == {S.PENDING, S.STARTING, S.RUNNING, S.COMPLETING}
    assert {s for s in S if s.is_terminal} == {
        S.COMPLETED,
        S.FAILED,
        S.TIMEOUT,
        S.DEAD,
        S.CANCELLED,
    }


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL, key=str))
def test_legal_transition(current: ExecutionState, target: ExecutionState) -> None:
    check_transition(current, target)
    assert current.can_transition_to(target)


@pytest.mark.parametrize(("current", "target"), [p for p in ALL_PAIRS if p not in LEGAL], ids=str)
def test_illegal_transition_raises_typed_error(
    current: ExecutionState, target: ExecutionState
) -> None:
    assert not current.can_transition_to(target)
    with pytest.raises(IllegalTransitionError) as info:
        check_transition(current, target)
    assert info.value.code == "illegal_transition"
    assert info.value.details == {"from": current.value, "to": target.value}


def test_terminal_states_go_nowhere() -> None:
    for state in S:
        if state.is_terminal:
            assert not any(state.can_transition_to(t) for t in S)


@pytest.mark.parametrize("bad", [{"value": "running"}, "running", "RUNNING", 2, None])
def test_non_state_arguments_raise_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="must be an ExecutionState"):
        check_transition(S.PENDING, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be an ExecutionState"):
        check_transition(bad, S.RUNNING)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        S.PENDING.can_transition_to(bad)  # type: ignore[arg-type]


def test_parse_wire_names() -> None:
    assert S.parse("running") is S.RUNNING
    assert S.parse("CANCELLED") is S.CANCELLED
    with pytest.raises(ValueError, match="nope"):
        S.parse("nope")
    with pytest.raises(TypeError):
        S.parse({"state": "running"})  # type: ignore[arg-type]
