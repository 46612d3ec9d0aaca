"""Plan rules: budgets per user and organisation, the month they renew, configured plans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from atoll.config import Settings
from atoll.runtime.plans import Plan, PlanCatalog, Spent, month_of, next_month

NOW = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)


def test_months_are_utc_and_renew_on_the_first() -> None:
    assert month_of(NOW) == "2026-12"
    assert next_month(NOW) == datetime(2027, 1, 1, tzinfo=UTC)
    assert next_month(datetime(2026, 2, 10, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)
    tokyo = datetime(2027, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=9)))  # still 2026 in UTC
    assert month_of(tokyo) == "2026-12"


def test_a_budget_refuses_once_spent_and_says_whose_and_when_it_renews() -> None:
    plan = Plan("free", 3, 60, monthly_tokens=100, org_monthly_tokens=1000)
    assert plan.refusal(Spent(99, 999), NOW) is None
    mine = plan.refusal(Spent(100, 5), NOW)
    assert mine is not None and mine.code == "quota_exceeded" and mine.status == 429
    assert (mine.details["scope"], mine.details["used"], mine.details["budget"]) == (
        "user", 100, 100,
    )  # fmt: skip
    assert mine.details["resets_at"] == "2027-01-01T00:00:00Z"
    assert mine.retry_after == 30.0
    ours = plan.refusal(Spent(1, 1000), NOW)
    assert ours is not None and ours.details["scope"] == "org"
    assert Plan("x", 1, 1, org_monthly_tokens=10).refusal(Spent(50, None), NOW) is None  # no org
    assert not Plan("x", 1, 1).capped and plan.capped
    zero = Plan("none", 1, 1, monthly_tokens=0)
    assert zero.refusal(Spent(), NOW) is not None  # a budget of 0: no model use at all


def test_configured_plans_inherit_the_server_limits_and_unknown_names_are_the_default() -> None:
    settings = Settings(
        max_concurrent_runs=4,
        messages_per_minute=30,
        plans={"basic": {"agents": ["assistant"]}, "gold": {"runs_at_once": 9}},
        default_plan="basic",
    )
    catalog = PlanCatalog.from_settings(settings)
    basic = catalog.get("basic")
    assert (basic.runs_at_once, basic.messages_per_minute) == (4, 30)
    assert basic.allows_agent("assistant") and not basic.allows_agent("supervisor")
    assert basic.allows_tool("anything")
    assert catalog.get("gold").runs_at_once == 9
    assert catalog.get("free") is basic  # a name no longer configured: the default plan
    assert catalog.names() == ["basic", "gold"]
    defaults = PlanCatalog.from_settings(Settings())
    assert defaults.names() == ["enterprise", "free", "pro"] and defaults.default == "free"


@pytest.mark.parametrize(
    "overrides",
    [
        {"plans": {"pro": {}}, "default_plan": "free"},
        {"plans": {"Free Plan": {}}, "default_plan": "Free Plan"},
        {"plans": {"free": {"runs_at_once": 0}}},
        {"plans": {"free": {"monthly_tokens": -1}}},
        {"plans": {"free": {"unknown_limit": 1}}},
    ],
)
def test_bad_plan_settings_are_refused_at_start(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**overrides)  # type: ignore[arg-type]


def test_plans_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOLL_PLANS", '{"team": {"monthly_tokens": 5000}}')
    monkeypatch.setenv("ATOLL_DEFAULT_PLAN", "team")
    settings = Settings()
    assert settings.plans["team"].monthly_tokens == 5000 and settings.default_plan == "team"
