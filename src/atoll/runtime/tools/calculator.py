"""``calculator``: safe arithmetic, parsed with ``ast`` and evaluated node by node (no eval).

Every operation is bounded by its cost *before* it is computed: an integer power
whose result would exceed ``MAX_RESULT_DIGITS`` digits is refused from the
operands' sizes alone, so ``(9**4000)**5000`` costs microseconds, not minutes.
With every intermediate value under ~14,300 bits and the expression under 500
characters, the worst input the limits allow evaluates in a few milliseconds
(measured in docs/reliability.md), so the tool stays on the event loop.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Annotated, Any

from atoll.errors import ToolError
from atoll.runtime.tools.base import tool

MAX_EXPRESSION_LENGTH = 500
MAX_EXPONENT = 10_000
MAX_RESULT_DIGITS = 4_300
MAX_RESULT_BITS = int(MAX_RESULT_DIGITS * math.log2(10)) - 1
"""At most ``MAX_RESULT_DIGITS`` decimal digits (also Python's int-to-str limit)."""
JSON_INT = 2**53
"""Integers larger than this are returned as decimal strings (JSON readers lose precision)."""

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., Number]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}
_REPLACEMENTS = {"×": "*", "÷": "/", "^": "**", "−": "-"}


def normalise_expression(expression: str) -> str:
    """The expression with common typographic operators replaced (``×`` → ``*``, ``^`` → ``**``)."""
    for old, new in _REPLACEMENTS.items():
        expression = expression.replace(old, new)
    return expression.strip()


def _check_size(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_RESULT_BITS:
        raise ToolError("result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result is not a finite number")
    return value


def _check_power(base: Number, exponent: Number) -> None:
    """Refuse a power whose result would be too large, before computing it."""
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent larger than {MAX_EXPONENT}")
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent < 2:
        return  # a float power overflows at once; a negative one gives a float
    # |base| >= 2**(bits - 1), so the result has at least (bits - 1) * exponent bits.
    if (abs(base).bit_length() - 1) * exponent > MAX_RESULT_BITS:
        raise ToolError("result is too large")


def _evaluate(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"unsupported literal {node.value!r}")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            return _check_size(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("result is too large") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check_size(_UNARY[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        args = [_evaluate(arg) for arg in node.args]
        try:
            return _check_size(_FUNCTIONS[node.func.id](*args))
        except (ValueError, TypeError) as exc:
            raise ToolError(f"{node.func.id}: {exc}") from None
        except OverflowError:
            raise ToolError("result is too large") from None
    raise ToolError(f"unsupported syntax: {ast.dump(node)[:60]}")


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression safely; ``ToolError`` for anything else."""
    text = normalise_expression(expression)
    if not text:
        raise ToolError("empty expression")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from None
    value = _evaluate(tree)
    if isinstance(value, complex):  # (-8)**0.5: Python answers with a complex number
        raise ToolError("the result is not a real number")
    return value


@tool(name="calculator", timeout=5.0)
async def calculator(
    expression: Annotated[str, "Arithmetic expression, e.g. '17*23' or 'sqrt(2)/3'"],
) -> dict[str, Any]:
    """Evaluate an arithmetic expression exactly (math, arithmetic, calculation)."""
    value = evaluate(expression)
    shown: Number | str = value
    if isinstance(value, int) and abs(value) > JSON_INT:
        shown = str(value)
    return {"expression": normalise_expression(expression), "value": shown}
