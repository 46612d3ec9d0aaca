"""What the database can hold: the one definition of input ranges checked at the edge.

Every integer a client sends that reaches a query (``after``, ``Last-Event-ID``,
a cursor's row key) must fit the column it is compared with, or the driver
raises (``OverflowError`` on SQLite, ``DataError`` on PostgreSQL) and the
request fails with a 500. Every JSON value that is stored must also come back
out: a lone surrogate (``"\\udfff"``) is accepted by Python's ``json`` but cannot
be encoded as UTF-8, and deeply nested values break the serialisers, so
metadata is checked by a round trip before it is stored. PostgreSQL cannot store
U+0000 (NUL) in text at all. So every request body and WebSocket frame is decoded
by ``load_json``, which refuses what cannot be stored (``check_text``) wherever it
is in the document, on every door alike.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_SEQ = 2**31 - 1
"""The largest event ``seq`` (``run_events.seq`` is a 32-bit INTEGER on PostgreSQL)."""
MAX_ROW_KEY = 2**63 - 1
"""The largest row key a cursor may name (BIGINT on PostgreSQL, INTEGER on SQLite)."""
MAX_METADATA_BYTES = 16 * 1024
"""The largest metadata object, as compact JSON (UTF-8 bytes)."""
MAX_METADATA_DEPTH = 16
"""The deepest nesting of metadata objects and arrays (the object itself is depth 1)."""


def decimal_pattern(limit: int) -> str:
    """A regular expression for the decimal integers 0..``limit`` (ASCII, no leading zeros).

    Used both to validate and to document (OpenAPI ``pattern``), so the schema a
    client reads is exactly what the server accepts.
    """
    digits = str(limit)
    shorter = ["[1-9]" + (f"[0-9]{{{n - 1}}}" if n > 1 else "") for n in range(1, len(digits))]
    options = ["0", *shorter]
    for index, digit in enumerate(map(int, digits)):
        low = 1 if index == 0 else 0
        if digit > low:
            rest = len(digits) - index - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            options.append(f"{digits[:index]}[{low}-{digit - 1}]{tail}")
    options.append(digits)
    return "^(?:" + "|".join(dict.fromkeys(options)) + ")$"


SEQ_PATTERN = decimal_pattern(MAX_SEQ)
"""A ``seq`` as text (``Last-Event-ID``)."""
CURSOR_PATTERN = "^[1-9][0-9]{0,17}$"
"""A page cursor: a row key below 10**18 (well inside ``MAX_ROW_KEY``)."""
ACTIVITY_CURSOR_PATTERN = r"^[0-9]{1,17}\.[1-9][0-9]{0,17}$"
"""A cursor of the threads listed by last activity: ``<microseconds since 1970>.<row key>``."""
MAX_SEARCH_CHARS = 200
"""The longest thread search (``GET /threads?q=``)."""


class UnstorableError(ValueError):
    """A value that cannot be stored and sent back; the message says why."""


def json_depth(value: Any, *, limit: int) -> int:
    """Nesting depth of objects/arrays in ``value``, counting no further than ``limit + 1``."""
    depth = 0
    level: list[Any] = [value]
    while level and depth <= limit:
        containers = [item for item in level if isinstance(item, dict | list)]
        if not containers:
            break
        depth += 1
        level = [
            child
            for item in containers
            for child in (item.values() if isinstance(item, dict) else item)
        ]
    return depth


def check_metadata(value: dict[str, Any]) -> None:
    """``UnstorableError`` unless ``value`` can be stored and sent back unchanged.

    The round trip is the one the value really takes: the JSON column and the
    answer both use the standard library's encoder (any integer, no NaN).
    """
    if json_depth(value, limit=MAX_METADATA_DEPTH) > MAX_METADATA_DEPTH:
        raise UnstorableError(f"nested deeper than {MAX_METADATA_DEPTH} levels")
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, TypeError) as exc:  # NaN/Infinity, lone surrogates (UnicodeEncodeError)
        raise UnstorableError(f"cannot be stored as JSON ({type(exc).__name__})") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise UnstorableError(f"larger than {MAX_METADATA_BYTES} bytes as JSON")
    if json.loads(encoded) != value:
        raise UnstorableError("does not survive a JSON round trip")


REFUSED_CHARACTERS = re.compile("[\x00\ud800-\udfff]")
"""What text may not contain: U+0000 (PostgreSQL text cannot hold it) and lone
surrogates (not Unicode scalar values: they cannot be encoded as UTF-8)."""
_MAYBE_REFUSED = re.compile(r"\\u(?:0000|[dD][89a-fA-F])|[\x00\ud800-\udfff]")
"""In JSON text: an escape that may decode to a refused character, or one written as is."""


def check_text(value: str) -> None:
    """``UnstorableError`` for text that cannot be stored and sent back (``REFUSED_CHARACTERS``)."""
    found = REFUSED_CHARACTERS.search(value)
    if found is None:
        return
    if found.group() == "\x00":
        raise UnstorableError("contains U+0000 (NUL), which cannot be stored")
    raise UnstorableError("contains characters that are not valid Unicode (a lone surrogate)")


def find_unstorable_text(value: Any) -> tuple[list[str | int], str] | None:
    """Where in a decoded JSON ``value`` (its keys included) the first text that
    ``check_text`` refuses is, and why; None when there is none. Iterative: any depth."""
    pending: list[tuple[list[str | int], Any]] = [([], value)]
    while pending:
        loc, item = pending.pop()
        if isinstance(item, str):
            items: list[tuple[list[str | int], Any]] = []
            texts = [(loc, item)]
        elif isinstance(item, dict):
            items = [([*loc, key], child) for key, child in item.items()]
            texts = [([*loc, REFUSED_CHARACTERS.sub("\ufffd", key)], key) for key in item]
        elif isinstance(item, list):
            items = [([*loc, index], child) for index, child in enumerate(item)]
            texts = []
        else:
            continue
        for place, text in texts:
            try:
                check_text(text)
            except UnstorableError as exc:
                return place, str(exc)
        pending.extend(reversed(items))
    return None


class InvalidJSONError(json.JSONDecodeError):
    """A body or frame that is not JSON Atoll accepts: not UTF-8, not JSON, a number JSON
    cannot carry back (NaN, Infinity, 1e999), or text ``check_text`` refuses. ``loc`` is
    the path to the offending value inside the document (empty: the document itself)."""

    def __init__(self, reason: str, document: str = "", loc: list[str | int] | None = None):
        super().__init__(reason, document, 0)
        self.reason = reason
        self.loc: list[str | int] = loc or []

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.reason, self.doc, self.loc)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is too large")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_json(data: bytes | str) -> Any:
    """Decode a request body or frame: the one decoding of client JSON on every door.

    Strict where ``json.loads`` is lax: UTF-8 only, no NaN/Infinity, no number that
    overflows a float, and no text ``check_text`` refuses anywhere in the document
    (``InvalidJSONError`` naming where). Integers keep their exact value.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    except UnicodeDecodeError:
        raise InvalidJSONError("the body is not valid UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise InvalidJSONError(f"not valid JSON: {exc}", text) from None
    except (ValueError, RecursionError) as exc:
        raise InvalidJSONError(f"not valid JSON: {exc or 'nested too deeply'}", text) from None
    if _MAYBE_REFUSED.search(text) is not None:
        found = find_unstorable_text(value)
        if found is not None:
            raise InvalidJSONError(found[1], text, found[0])
    return value
