"""Property: no expression the calculator's grammar allows costs more than a small CPU budget.

Expressions are generated from the grammar itself (every operator, every function,
integers from 0 to thousands of digits, floats, constants, nesting), with the
shapes attackers used mixed in: ``round`` with huge negative digits, powers of
powers, long multiplication chains. Each evaluation must finish — answered or
refused with a ``ToolError`` — within the budget of CPU time of this thread (CPU,
not wall time: a loaded machine does not make it fail).
"""

from __future__ import annotations

import contextlib
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from atoll.errors import ToolError
from atoll.runtime.tools.calculator import _BINARY, _FUNCTIONS, MAX_EXPRESSION_LENGTH, evaluate

pytestmark = pytest.mark.unit

CPU_BUDGET = 0.1
"""Seconds of CPU one evaluation may take; the worst inputs found take a few milliseconds."""

_OPERATORS = ["+", "-", "*", "/", "//", "%", "**", "^", "×", "÷"]

integers = st.one_of(
    st.integers(0, 10**6).map(str),
    st.sampled_from(["9" * 400, "10**7", "10**9", "10**4299", "9**4500", "2**14000", "7**5000"]),
)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
    st.sampled_from(["1e308", "1e-308", "pi", "e", "tau", "0.5"]),
)
leaves = st.one_of(integers, floats)


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(children, st.sampled_from(_OPERATORS), children).map(
        lambda t: f"({t[0]}{t[1]}{t[2]})"
    )
    unary = st.tuples(st.sampled_from(["-", "+"]), children).map(lambda t: f"{t[0]}{t[1]}")
    call = st.tuples(
        st.sampled_from(sorted(_FUNCTIONS)), st.lists(children, min_size=1, max_size=3)
    ).map(lambda t: f"{t[0]}({', '.join(t[1])})")
    rounding = st.tuples(children, st.sampled_from(["-", ""]), children).map(
        lambda t: f"round({t[0]}, {t[1]}{t[2]})"
    )
    return st.one_of(binary, unary, call, rounding)


expressions = st.recursive(leaves, _combine, max_leaves=24)


def _cpu_of(expression: str) -> float:
    started = time.thread_time()
    with contextlib.suppress(ToolError):
        evaluate(expression)
    return time.thread_time() - started


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions)
@example("round(9, -10**7)")
@example("round(9**4500, -10**9)")
@example("round(9, 10**9)")
@example("round(1.5, -10**9)")
@example("(9**4000)**5000")
@example("9**4000*9**4000*9**4000*9**4000")
@example("2**14000 * 2**14000")
@example("(2**14000)//3 % 7**5000")
@example("max(9**4500, 9**4500) * 9**4500")
@example("floor(1e308) ** 10")
@example("round(2**14000, -4300) + round(3**9000, -4300)")
@example("-" * 400 + "1")
@example("(" * 90 + "1" + ")" * 90)
def test_every_expression_is_answered_or_refused_within_a_small_cpu_budget(expression: str) -> None:
    if len(expression) > MAX_EXPRESSION_LENGTH:
        expression = expression[:MAX_EXPRESSION_LENGTH]
    assert _cpu_of(expression) < CPU_BUDGET, expression


def test_every_operation_of_the_grammar_has_a_price() -> None:
    for name, operation in {**_FUNCTIONS, **{o.__name__: op for o, op in _BINARY.items()}}.items():
        assert callable(operation.price), name
