"""Plans: what a user may run, how much at once, how fast, and how many tokens a month.

A plan belongs to the user's organisation (users outside one have the default
plan, or the one an operator gave them). ``PlanCatalog`` is built once from the
settings; ``Plan.refusal`` is the one place a token budget is judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Self

from atoll.config import PlanSettings, Settings
from atoll.errors import AgentForbiddenError, QuotaExceededError


def month_of(at: datetime) -> str:
    """The calendar month (UTC) a token is counted in: ``"2026-12"``."""
    return at.astimezone(UTC).strftime("%Y-%m")


def next_month(at: datetime) -> datetime:
    """When the budgets counted in ``at``'s month renew: the first of the next, 00:00 UTC."""
    at = at.astimezone(UTC)
    year, month = (at.year + 1, 1) if at.month == 12 else (at.year, at.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Spent:
    """Tokens counted this month: the user's, and their organisation's (None: no org)."""

    user: int = 0
    org: int | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """What one plan allows; ``None`` for tools or agents is "all of them"."""

    name: str
    runs_at_once: int
    messages_per_minute: int
    tools: frozenset[str] | None = None
    agents: frozenset[str] | None = None
    monthly_tokens: int | None = None
    org_monthly_tokens: int | None = None

    @property
    def capped(self) -> bool:
        """Whether any token budget applies (else usage need not be read to admit a run)."""
        return self.monthly_tokens is not None or self.org_monthly_tokens is not None

    def allows_tool(self, name: str) -> bool:
        """Whether the plan includes tool ``name``."""
        return self.tools is None or name in self.tools

    def allows_agent(self, name: str) -> bool:
        """Whether the plan includes agent ``name``."""
        return self.agents is None or name in self.agents

    def check_agent(self, name: str) -> None:
        """Raise ``AgentForbiddenError`` unless the plan includes agent ``name`` (the one rule,
        applied by every door before storing and by the engine for every sub-agent)."""
        if not self.allows_agent(name):
            raise AgentForbiddenError(
                f"the agent {name!r} is not included in the {self.name} plan",
                details={"agent": name, "plan": self.name},
            )

    def refusal(self, spent: Spent, now: datetime) -> QuotaExceededError | None:
        """The error for a new run when a budget is spent, else None."""
        if self.monthly_tokens is not None and spent.user >= self.monthly_tokens:
            scope, used, budget = "user", spent.user, self.monthly_tokens
            whose = "your"
        elif (
            self.org_monthly_tokens is not None
            and spent.org is not None
            and spent.org >= self.org_monthly_tokens
        ):
            scope, used, budget = "org", spent.org, self.org_monthly_tokens
            whose = "your organisation's"
        else:
            return None
        renews = next_month(now)
        return QuotaExceededError(
            f"{whose} monthly token budget of {budget:,} on the {self.name} plan is spent; "
            f"it renews on {renews:%Y-%m-%d} (UTC)",
            retry_after=(renews - now).total_seconds(),
            details={
                "scope": scope,
                "plan": self.name,
                "used": used,
                "budget": budget,
                "resets_at": renews.isoformat().replace("+00:00", "Z"),
            },
        )

    def as_dict(self) -> dict[str, object]:
        """The plan as ``/me`` and the org view show it."""
        return {
            "name": self.name,
            "runs_at_once": self.runs_at_once,
            "messages_per_minute": self.messages_per_minute,
            "tools": sorted(self.tools) if self.tools is not None else None,
            "agents": sorted(self.agents) if self.agents is not None else None,
            "monthly_tokens": self.monthly_tokens,
            "org_monthly_tokens": self.org_monthly_tokens,
        }


def _frozen(names: Iterable[str] | None) -> frozenset[str] | None:
    return frozenset(names) if names is not None else None


class PlanCatalog:
    """The configured plans; a name it does not know is the default plan."""

    def __init__(self, plans: Mapping[str, Plan], *, default: str) -> None:
        if default not in plans:
            raise ValueError(f"the default plan {default!r} is not among the plans")
        self._plans = dict(plans)
        self.default = default

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The plans of ``ATOLL_PLANS`` (limits they leave unset are the server's)."""
        return cls(
            {name: cls.plan_of(name, plan, settings) for name, plan in settings.plans.items()},
            default=settings.default_plan,
        )

    @staticmethod
    def plan_of(name: str, plan: PlanSettings, settings: Settings) -> Plan:
        """One configured plan, with the server's limits where it sets none."""
        return Plan(
            name=name,
            runs_at_once=plan.runs_at_once or settings.max_concurrent_runs,
            messages_per_minute=plan.messages_per_minute or settings.messages_per_minute,
            tools=_frozen(plan.tools),
            agents=_frozen(plan.agents),
            monthly_tokens=plan.monthly_tokens,
            org_monthly_tokens=plan.org_monthly_tokens,
        )

    def get(self, name: str) -> Plan:
        """The plan called ``name``; the default plan for a name not configured (any more)."""
        return self._plans.get(name) or self._plans[self.default]

    def __contains__(self, name: object) -> bool:
        return name in self._plans

    def names(self) -> list[str]:
        """The configured plan names."""
        return sorted(self._plans)
