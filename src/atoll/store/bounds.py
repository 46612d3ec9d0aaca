"""What the database can hold: the one definition of input ranges checked at the edge.

Every integer a client sends that reaches a query (``after``, ``Last-Event-ID``,
a cursor's row key) must fit the column it is compared with, or the driver
raises (``OverflowError`` on SQLite, ``DataError`` on PostgreSQL) and the
request fails with a 500. Every JSON value that is stored must also come back
out: a lone surrogate (``"\\udfff"``) is accepted by Python's ``json`` but cannot
be encoded as UTF-8, and deeply nested values break the serialisers, so
metadata is checked by a round trip before it is stored.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_SEQ = 2**31 - 1
"""The largest event ``seq`` (``run_events.seq`` is a 32-bit INTEGER on PostgreSQL)."""
MAX_ROW_KEY = 2**63 - 1
"""The largest row key a cursor may name (BIGINT on PostgreSQL, INTEGER on SQLite)."""
MAX_METADATA_BYTES = 16 * 1024
"""The largest metadata object, as compact JSON (UTF-8 bytes)."""
MAX_METADATA_DEPTH = 16
"""The deepest nesting of metadata objects and arrays (the object itself is depth 1)."""


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
    """``UnstorableError`` unless ``value`` can be stored and sent back unchanged."""
    if json_depth(value, limit=MAX_METADATA_DEPTH) > MAX_METADATA_DEPTH:
        raise UnstorableError(f"nested deeper than {MAX_METADATA_DEPTH} levels")
    try:
        encoded = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise UnstorableError(f"cannot be stored as JSON ({exc})") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise UnstorableError(f"larger than {MAX_METADATA_BYTES} bytes as JSON")
    if orjson.loads(encoded) != value:
        raise UnstorableError("does not survive a JSON round trip")


def check_text(value: str) -> None:
    """``UnstorableError`` for text that cannot be encoded as UTF-8 (lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UnstorableError("contains characters that are not valid Unicode") from None
