"""Request and response bodies of the REST API (the OpenAPI document is generated from these).

Unknown extra fields in a request are ignored; only what a client cannot do
without is required.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from atoll.auth.service import EMAIL_SHAPE
from atoll.runtime.plans import Plan, Spent, month_of, next_month
from atoll.store.bounds import UnstorableError, check_metadata, check_text
from atoll.store.models import Feedback, Message, Thread

Multitask = Literal["reject", "enqueue", "interrupt"]
EMAIL_PATTERN = rf"^[ \t]*{EMAIL_SHAPE}[ \t]*$"
"""What ``normalise_email`` accepts (surrounding spaces are trimmed)."""
_INTEGER = re.compile(r"-?[0-9]+")


def _integer_text(value: object) -> object:
    """A query integer as written in a URL: digits, maybe a minus — not "0.0", "+3", "1_0"
    (which the lax integer parsing would take, though the schema says integer)."""
    if isinstance(value, str) and not _INTEGER.fullmatch(value):
        raise ValueError("must be an integer")
    return value


INTEGER_TEXT = BeforeValidator(_integer_text)
"""Put after a query integer's ``Field(ge=, le=)`` (then the schema shows the bounds):
the value is parsed exactly as its OpenAPI type says."""


class Body(BaseModel):
    """Base of request bodies: extra fields are ignored, never a reason for 422.

    Every field is checked to be storable *and* sendable back: text must pass
    ``check_text`` (no lone surrogate, no U+0000 — which ``load_json`` already refuses
    anywhere in a body), metadata objects must pass ``check_metadata`` (size, depth,
    JSON round trip) — see ``atoll.store.bounds``.
    """

    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        if isinstance(value, str):
            check_text(value)
        elif isinstance(value, dict):
            check_metadata(value)
        return value


class RegisterBody(Body):
    email: str = Field(max_length=320, pattern=EMAIL_PATTERN)
    password: str = Field(min_length=8, max_length=1024)
    name: str | None = Field(None, max_length=200)


class LoginBody(Body):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class RefreshBody(Body):
    refresh_token: str = Field(max_length=4096)


class UserOut(BaseModel):
    id: str
    email: str
    name: str | None
    plan: str
    roles: list[str]
    created_at: datetime


class TokenOut(BaseModel):
    user: UserOut
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int


class ThreadCreate(Body):
    title: str | None = Field(None, max_length=500)
    metadata: dict[str, Any] | None = None


class ThreadPatch(Body):
    title: str | None = Field(None, max_length=500)
    metadata: dict[str, Any] | None = None


class ThreadOut(BaseModel):
    id: str
    title: str | None
    metadata: dict[str, Any]
    metadata_error: str | None = None
    created_at: datetime
    updated_at: datetime


class ThreadPage(BaseModel):
    items: list[ThreadOut]
    next_cursor: str | None


class FeedbackBody(Body):
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=2000)


class FeedbackOut(BaseModel):
    message_id: str
    thread_id: str
    rating: Literal["up", "down"]
    comment: str | None
    created_at: datetime
    updated_at: datetime


class MessageOut(BaseModel):
    id: str
    thread_id: str
    role: str
    content: str
    run_id: str | None
    created_at: datetime
    feedback: FeedbackOut | None = None


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None


class RunOut(BaseModel):
    id: str
    thread_id: str
    agent: str
    state: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: dict[str, Any] | None = None


class RunCreate(Body):
    message: str = Field(min_length=1)
    agent: str | None = Field(None, max_length=100)
    multitask: Multitask = "reject"
    metadata: dict[str, Any] | None = None


class ChatBody(RunCreate):
    thread_id: str | None = Field(None, max_length=64)


class RunAccepted(BaseModel):
    run: RunOut
    message: MessageOut


class ChatAccepted(RunAccepted):
    thread_id: str


class EventPage(BaseModel):
    items: list[dict[str, Any]]
    next_after: int


class AgentOut(BaseModel):
    name: str
    description: str


class ToolOut(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any]


class FeedbackPage(BaseModel):
    items: list[FeedbackOut]
    next_cursor: str | None


class RunEventsOut(BaseModel):
    runs: dict[str, list[dict[str, Any]]]
    """run_id -> its logged events (envelopes), oldest first."""


def thread_out(thread: Thread) -> ThreadOut:
    """The public view of a thread.

    Metadata stored before it was checked (by an older version) and that cannot be
    sent back is left out and named, so the listing still works and the user can
    find the thread and replace (PATCH) or delete it.
    """
    metadata = thread.meta or {}
    problem = None
    try:
        check_metadata(metadata)
    except UnstorableError as exc:
        metadata, problem = {}, f"the stored metadata cannot be shown ({exc}); replace it"
    return ThreadOut(
        id=thread.id,
        title=thread.title,
        metadata=metadata,
        metadata_error=problem,
        created_at=thread.created_at,
        updated_at=thread.updated_at,
    )


def message_out(message: Message, feedback: Feedback | None = None) -> MessageOut:
    """The public view of a message (with the owner's feedback on it, if any)."""
    return MessageOut(
        id=message.id,
        thread_id=message.thread_id,
        role=message.role,
        content=message.content,
        run_id=message.run_id,
        created_at=message.created_at,
        feedback=feedback_out(feedback) if feedback is not None else None,
    )


def feedback_out(feedback: Feedback) -> FeedbackOut:
    """The public view of feedback on an answer."""
    return FeedbackOut(
        message_id=feedback.message_id,
        thread_id=feedback.thread_id,
        rating=feedback.rating,  # stored from FeedbackBody only
        comment=feedback.comment,
        created_at=feedback.created_at,
        updated_at=feedback.updated_at,
    )


class PlanOut(BaseModel):
    name: str
    runs_at_once: int
    messages_per_minute: int
    tools: list[str] | None = Field(description="The tools included; null: all")
    agents: list[str] | None = Field(description="The agents included; null: all")
    monthly_tokens: int | None = Field(description="Per user and month; null: no cap")
    org_monthly_tokens: int | None = Field(description="Per organisation and month; null: no cap")


class UsageOut(BaseModel):
    month: str = Field(description="YYYY-MM, UTC")
    tokens: int = Field(description="Model tokens (prompt + completion) counted this month")
    org_tokens: int | None = Field(None, description="The organisation's, when you are in one")
    resets_at: datetime


class OrgRef(BaseModel):
    id: str
    name: str
    role: Literal["admin", "member"]


class MeOut(UserOut):
    org: OrgRef | None
    limits: PlanOut = Field(description="What your plan (your organisation's) allows")
    usage: UsageOut


class OrgOut(BaseModel):
    id: str
    name: str
    plan: PlanOut
    sso_required: bool
    providers: list[str] = Field(
        description="The OpenID Providers that sign its people in; empty: any configured one"
    )
    domains: list[str]
    members: int
    role: Literal["admin", "member"] = Field(description="Yours")
    usage: UsageOut
    created_at: datetime


class OrgPatch(Body):
    sso_required: bool | None = None
    providers: list[Annotated[str, Field(max_length=64)]] | None = Field(None, max_length=20)


class MemberOut(BaseModel):
    user_id: str
    email: str
    name: str | None
    role: Literal["admin", "member"]
    joined_at: datetime
    removed_at: datetime | None
    tokens: int = Field(description="Model tokens counted this month")


class MemberPage(BaseModel):
    items: list[MemberOut]
    next_cursor: str | None


class MemberPatch(Body):
    role: Literal["admin", "member"]


def plan_out(plan: Plan) -> PlanOut:
    """The public view of a plan."""
    return PlanOut.model_validate(plan.as_dict())


def usage_out(spent: Spent, now: datetime) -> UsageOut:
    """This month's counted tokens."""
    return UsageOut(
        month=month_of(now), tokens=spent.user, org_tokens=spent.org, resets_at=next_month(now)
    )
