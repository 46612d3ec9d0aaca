"""``current_time``: the current date and time, in UTC or a named IANA time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from atoll.errors import ToolError
from atoll.runtime.tools.base import tool


@tool(name="current_time", timeout=5.0)
async def current_time(
    timezone: Annotated[str, "IANA time zone such as 'Europe/Paris'; UTC when omitted"] = "UTC",
) -> dict[str, Any]:
    """Tell the current date and time (clock, date, today, now)."""
    try:
        zone = UTC if timezone.upper() == "UTC" else ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown time zone {timezone!r}") from None
    now = datetime.now(zone)
    return {
        "iso": now.isoformat(timespec="seconds"),
        "timezone": "UTC" if zone is UTC else timezone,
        "weekday": now.strftime("%A"),
        "date": now.date().isoformat(),
        "time": now.strftime("%H:%M:%S"),
    }
