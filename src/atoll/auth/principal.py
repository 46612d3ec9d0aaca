"""``Principal``: who a verified token stands for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified identity behind a request."""

    user_id: str
    session_id: str
    email: str
    name: str | None
    plan: str
    roles: frozenset[str]
    created_at: datetime
    org_id: str | None = None
    """The user's organisation (its plan is ``plan``), if they are in one."""
    org_role: str | None = None
    scopes: frozenset[str] | None = None
    """An API key's scopes (``read``, ``chat``); None for a signed-in session (all)."""
