"""``calculator``: safe arithmetic, parsed with ``ast`` and evaluated node by node (no eval).

Bounded by construction: every operation the grammar allows is an ``Operation``
with a *price* — an upper bound on the size of its result, computed from the
operands' sizes (and, for ``**`` and ``round``, the values that set the work)
*before* the operation runs. An operation whose price exceeds the bound is
refused without being performed, so no input can make one step expensive:
``round(9, -10**7)`` (which computes ``10**10_000_000`` inside ``round``) and
``(9**4000)**5000`` are refused in microseconds. Adding a function means adding
its price; there is no way to call something unpriced. Every value is then at
most ``MAX_RESULT_BITS`` bits and the expression at most 500 characters, so a
whole evaluation costs a few milliseconds at worst (a property test generates
expressions from this grammar and checks it).

The tool is a plain ``def``: it runs in the killable tool process pool like any
CPU-bound tool, so even a mistake in a price is bounded by its timeout there and
never runs on the server's event loop.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from atoll.errors import ToolError
from atoll.runtime.tools.base import tool

MAX_EXPRESSION_LENGTH = 500
MAX_EXPONENT = 10_000
MAX_RESULT_DIGITS = 4_300
MAX_RESULT_BITS = int(MAX_RESULT_DIGITS * math.log2(10)) - 1
"""At most ``MAX_RESULT_DIGITS`` decimal digits (also Python's int-to-str limit)."""
FLOAT_BITS = 1_025
"""A finite float converts to an integer of at most this many bits (``floor(1e308)``)."""
JSON_INT = 2**53
"""Integers larger than this are returned as decimal strings (JSON readers lose precision)."""

Number = int | float


def _bits(value: Number) -> int:
    """An upper bound on the bits of ``value`` as an integer (what an operation may grow)."""
    return value.bit_length() if isinstance(value, int) else FLOAT_BITS


def _sum_price(left: Number, right: Number) -> int:
    return max(_bits(left), _bits(right)) + 1


def _product_price(left: Number, right: Number) -> int:
    return _bits(left) + _bits(right)


def _quotient_price(left: Number, right: Number) -> int:
    return _bits(left) + 1


def _power_price(base: Number, exponent: Number) -> int:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent larger than {MAX_EXPONENT}")
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent < 2:
        return 0  # a float power overflows at once; a negative one gives a float
    # |base| >= 2**(bits - 1), so the result has at least (bits - 1) * exponent bits.
    return (abs(base).bit_length() - 1) * exponent


def _round_price(value: Number, digits: Number | None = None) -> int:
    if digits is None:
        return _bits(value)
    if not isinstance(digits, int):
        raise ToolError("round: the number of digits must be an integer")
    if abs(digits) > MAX_RESULT_DIGITS:
        raise ToolError(f"round: at most {MAX_RESULT_DIGITS} digits either side of the point")
    # round(x, -n) computes 10**n inside: bounded above, a few microseconds at most.
    return _bits(value) + 4  # rounding up may add a digit


def _same_size(*values: Number) -> int:
    return max(_bits(v) for v in values)


def _real(*values: Number) -> int:
    return 0  # float in, float out: a non-finite result is refused afterwards


@dataclass(frozen=True, slots=True)
class Operation:
    """One thing the grammar can do: how to compute it, and its price beforehand."""

    compute: Callable[..., Number]
    price: Callable[..., int]
    """Upper bound on the result's bits from the operands; raises ``ToolError`` to refuse."""
    arity: tuple[int, int] = (1, 1)
    """Fewest and most arguments (functions only)."""


_BINARY: dict[type[ast.operator], Operation] = {
    ast.Add: Operation(operator.add, _sum_price),
    ast.Sub: Operation(operator.sub, _sum_price),
    ast.Mult: Operation(operator.mul, _product_price),
    ast.Div: Operation(operator.truediv, _real),
    ast.FloorDiv: Operation(operator.floordiv, _quotient_price),
    ast.Mod: Operation(operator.mod, _same_size),
    ast.Pow: Operation(operator.pow, _power_price),
}
_UNARY: dict[type[ast.unaryop], Operation] = {
    ast.UAdd: Operation(operator.pos, _same_size),
    ast.USub: Operation(operator.neg, _same_size),
}
_MANY = (1, 32)
_FUNCTIONS: dict[str, Operation] = {
    "abs": Operation(abs, _same_size),
    "round": Operation(round, _round_price, (1, 2)),
    "min": Operation(min, _same_size, _MANY),
    "max": Operation(max, _same_size, _MANY),
    "sqrt": Operation(math.sqrt, _real),
    "log": Operation(math.log, _real, (1, 2)),
    "log10": Operation(math.log10, _real),
    "exp": Operation(math.exp, _real),
    "sin": Operation(math.sin, _real),
    "cos": Operation(math.cos, _real),
    "tan": Operation(math.tan, _real),
    "floor": Operation(math.floor, _same_size),
    "ceil": Operation(math.ceil, _same_size),
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
    if isinstance(value, complex):  # (-8)**0.5: Python answers with a complex number
        raise ToolError("the result is not a real number")
    return value


def apply(name: str, operation: Operation, args: Sequence[Number]) -> Number:
    """Price ``operation`` on ``args``, refuse it if too costly, else perform it."""
    if operation.price(*args) > MAX_RESULT_BITS:
        raise ToolError("result is too large")
    try:
        return _check_size(operation.compute(*args))
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("result is too large") from None
    except (ValueError, TypeError) as exc:
        raise ToolError(f"{name}: {exc}") from None


def _evaluate(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ToolError(f"unsupported literal {node.value!r}")
        return _check_size(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        args = (_evaluate(node.left), _evaluate(node.right))
        return apply(type(node.op).__name__, _BINARY[type(node.op)], args)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return apply(type(node.op).__name__, _UNARY[type(node.op)], (_evaluate(node.operand),))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        operation = _FUNCTIONS[node.func.id]
        fewest, most = operation.arity
        if not fewest <= len(node.args) <= most:
            raise ToolError(f"{node.func.id} takes {fewest} to {most} arguments")
        return apply(node.func.id, operation, [_evaluate(arg) for arg in node.args])
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
    except (SyntaxError, RecursionError, MemoryError):
        raise ToolError(f"not an arithmetic expression: {text[:80]!r}") from None
    try:
        return _evaluate(tree)
    except RecursionError:
        raise ToolError("the expression is nested too deeply") from None


@tool(name="calculator", timeout=5.0)
def calculator(
    expression: Annotated[str, "Arithmetic expression, e.g. '17*23' or 'sqrt(2)/3'"],
) -> dict[str, Any]:
    """Evaluate an arithmetic expression exactly (math, arithmetic, calculation)."""
    value = evaluate(expression)
    shown: Number | str = value
    if isinstance(value, int) and abs(value) > JSON_INT:
        shown = str(value)
    return {"expression": normalise_expression(expression), "value": shown}
