"""The offline model's reading of a question: which arithmetic expression it sends."""

from __future__ import annotations

import pytest

from atoll.runtime.llm.offline import extract_expression

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("question", "expression"),
    [
        ("What is 17*23?", "17*23"),
        ("What is sqrt(2) * pi + 10**20?", "sqrt(2) * pi + 10**20"),  # all of it, not "+ 10**20"
        ("What is pi * 2?", "pi * 2"),
        ("what is 2 plus 3", "2 + 3"),
        ("What is 2 to the power of 8?", "2 ** 8"),
        ("Compute (1+2)*3 please", "(1+2)*3"),
        ("What is (2 + 3) * (4 - 1)?", "(2 + 3) * (4 - 1)"),
        ("What is -3 + 4?", "-3 + 4"),
        ("How much is 12.5 / 5?", "12.5 / 5"),
        ("What is 6 × 7.", "6 × 7"),
        ("sqrt(16)+1", "sqrt(16)+1"),
        ("the 3 apples and 4 pears", None),
        ("What time is it?", None),
        ("17", None),
    ],
)
def test_the_expression_of_a_question(question: str, expression: str | None) -> None:
    assert extract_expression(question) == expression


@pytest.mark.parametrize(
    ("hostile", "expression"),
    [
        ("1 " * 16_000 + "x", None),
        ("(" * 32_000, None),
        ("-" * 32_000 + "1", None),
        (")" * 32_000 + "1+1", "1+1"),
        ("1+" * 16_000, "+".join(["1"] * 16_000)),
    ],
)
def test_a_message_built_to_backtrack_is_read_in_one_pass(
    hostile: str, expression: str | None
) -> None:
    """Shapes on which the regular expression this replaced backtracked for seconds (28 s
    for the first): one user's message must not hold the event loop (docs/reliability.md)."""
    assert extract_expression(hostile) == expression
