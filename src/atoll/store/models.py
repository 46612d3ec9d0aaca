"""The database tables. Times are stored as timezone-aware UTC; ids are prefixed strings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Integer keys that autoincrement on SQLite and PostgreSQL alike.
AutoKey = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime that is always timezone-aware UTC, also on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with constraint naming conventions (stable migrations)."""

    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    """A person who can log in."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(256))
    plan: Mapped[str] = mapped_column(String(32), default="free")
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuthSession(Base):
    """A login: one refresh-token family. Revoking it kills its access tokens at once.

    The last rotation is kept (the spent refresh token's id, when, and the new access
    token's id) so that the spent token presented again within the reuse interval gets
    the very same pair back, re-signed from these claims: no token is stored.
    """

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    refresh_jti: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str | None] = mapped_column(String(64))
    """The OpenID Provider that signed this session in; None: a password."""
    previous_refresh_jti: Mapped[str | None] = mapped_column(String(64))
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When ``previous_refresh_jti`` was spent: the ``iat`` of the pair it was traded for."""
    access_jti: Mapped[str | None] = mapped_column(String(64))
    """The id of the access token issued with ``refresh_jti`` at ``rotated_at``."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_reason: Mapped[str | None] = mapped_column(String(64))


class ApiKey(Base):
    """A user's personal API key for programs: stored as the SHA-256 of the whole key
    (a 256-bit random secret needs no slow hash), shown once when made."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Thread(Base):
    """A conversation of one user."""

    __tablename__ = "threads"

    pk: Mapped[int] = mapped_column(AutoKey, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str | None] = mapped_column(String(500))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """Set when its deletion begins: from then on it is gone for every read and no run can
    be stored on it, while the runs it has end (``RunStore.close_thread``)."""

    __table_args__ = (
        Index("ix_threads_user_pk", "user_id", "pk"),
        Index("ix_threads_user_updated", "user_id", "updated_at", "pk"),
    )


class ThreadAlias(Base):
    """Another protocol's name for one of a user's threads: an AG-UI client's ``threadId``
    (its own id, sent with every run of the conversation) maps to the Atoll thread."""

    __tablename__ = "thread_aliases"

    pk: Mapped[int] = mapped_column(AutoKey, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(200))
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("user_id", "source", "external_id", name="uq_thread_aliases_external"),
    )


class Message(Base):
    """One message of a thread (user or assistant)."""

    __tablename__ = "messages"

    pk: Mapped[int] = mapped_column(AutoKey, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(String(64))
    client_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_messages_thread_pk", "thread_id", "pk"),
        UniqueConstraint("user_id", "client_id", name="uq_messages_user_client"),
    )


class Run(Base):
    """One agent run: its state as last recorded durably."""

    __tablename__ = "runs"

    pk: Mapped[int] = mapped_column(AutoKey, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    agent: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), index=True)
    input_message_id: Mapped[str] = mapped_column(String(64))
    answer_message_id: Mapped[str | None] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    """Scale-out: the worker that claimed the run (None while queued, or in-process)."""
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Scale-out: how many times a worker claimed the run."""
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """Scale-out: when it was last handed back to the queue (None: since ``created_at``)."""

    __table_args__ = (Index("ix_runs_thread_state", "thread_id", "state"),)


class RunEventRow(Base):
    """One logged run event (its wire bytes)."""

    __tablename__ = "run_events"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Feedback(Base):
    """A user's rating of one answer (thumbs up or down, with an optional comment)."""

    __tablename__ = "feedback"

    pk: Mapped[int] = mapped_column(AutoKey, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), unique=True
    )
    thread_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(64))
    rating: Mapped[str] = mapped_column(String(8))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_feedback_user_pk", "user_id", "pk"),)


class Identity(Base):
    """A user's account at an OpenID Provider: the provider's issuer and subject are the
    key (never the email, which a provider may let its users change)."""

    __tablename__ = "identities"

    pk: Mapped[int] = mapped_column(AutoKey, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(500))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_identities_issuer_subject"),)


class OIDCLogin(Base):
    """A sign-in in progress: what the callback must find (stored by the hash of its state)."""

    __tablename__ = "oidc_logins"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[str] = mapped_column(String(128))
    verifier: Mapped[str] = mapped_column(String(128))
    next_path: Mapped[str] = mapped_column(String(2000))
    browser_hash: Mapped[str] = mapped_column(String(64))
    link_user_id: Mapped[str | None] = mapped_column(String(64))
    """Set when a signed-in user links this provider to their account."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LoginCode(Base):
    """The one-time code a finished sign-in hands to the page (by its hash), to trade for
    tokens by POST: tokens never travel in a URL."""

    __tablename__ = "login_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    provider: Mapped[str | None] = mapped_column(String(64))
    """The provider the user signed in with (the session it starts records it)."""
    browser_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Org(Base):
    """An organisation: owns email domains, has members and a plan."""

    __tablename__ = "orgs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(32), default="free")
    sso_required: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OrgDomain(Base):
    """An email domain an organisation owns (IDNA, lower case)."""

    __tablename__ = "org_domains"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)


class OrgProvider(Base):
    """An OpenID Provider (by its configured name) bound to an organisation: when an
    organisation has any, only they sign its people in."""

    __tablename__ = "org_providers"

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)


class OrgMember(Base):
    """A user's membership of their (one) organisation."""

    __tablename__ = "org_members"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16), default="member")
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """Set when an admin removed the member: they cannot sign in until restored."""
    removed_by: Mapped[str | None] = mapped_column(String(64))


class UsageCounter(Base):
    """Model tokens (prompt + completion) counted for a user or an organisation in a month."""

    __tablename__ = "usage_counters"

    owner_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """A user id (``usr_…``) or an organisation id (``org_…``)."""
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    """``YYYY-MM``, UTC."""
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    runs: Mapped[int] = mapped_column(BigInteger, default=0)


class AuditEntry(Base):
    """A security-relevant action."""

    __tablename__ = "audit_log"

    pk: Mapped[int] = mapped_column(AutoKey, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(64), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
