"""Prefixed, random, URL-safe identifiers (``usr_…``, ``run_…``)."""

from __future__ import annotations

import secrets

ID_PREFIXES = frozenset(
    {"usr", "thr", "msg", "run", "req", "evt", "con", "call", "ses", "org", "key"}
)


def new_id(prefix: str) -> str:
    """A fresh identifier ``<prefix>_<22 random URL-safe characters>``."""
    if prefix not in ID_PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    return f"{prefix}_{secrets.token_urlsafe(16)}"
