"""The exception hierarchy of Atoll.

Every error carries a stable machine ``code`` (the string clients see in
problem JSON and WebSocket ``error`` frames) and an HTTP ``status`` hint. The
server turns these into wire answers in one place; nothing else formats errors.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AtollError(Exception):
    """Base class of every error Atoll raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    retry_after: float | None = None
    """Seconds after which the same request may succeed (the ``Retry-After`` header), if any."""

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        """The error as ``{"code", "message"}`` plus any details, for events and logs."""
        return {"code": self.code, "message": self.message, **self.details}


class ConfigurationError(AtollError):
    """Raised when settings, a plugin or a provider cannot be set up as configured."""

    code = "configuration_error"


class DatabaseTooNewError(ConfigurationError):
    """Raised when the database was migrated by a newer Atoll than this one: this code would
    misread it, so it refuses to start (``atoll serve``, ``atoll worker``, ``atoll db``)."""

    code = "database_too_new"

    def __init__(self, revision: str, head: str) -> None:
        super().__init__(
            f"the database is at revision {revision}, newer than this Atoll (knows up to "
            f"{head}): upgrade Atoll",
            details={"revision": revision, "head": head},
        )
        self.revision = revision
        self.head = head


class InvalidContextError(AtollError, ValueError):
    """Raised when a ``UserExecutionContext`` would be built from invalid values."""

    code = "invalid_context"
    status = 422


class IllegalTransitionError(AtollError):
    """Raised when a run is asked to move between two states the table forbids."""

    code = "illegal_transition"
    status = 409


class NotFoundError(AtollError):
    """Raised when a resource is missing or belongs to another user (the two look alike)."""

    code = "not_found"
    status = 404


class RunNotFoundError(NotFoundError):
    """Raised when a run id is unknown (or belongs to another user)."""


class ValidationFailedError(AtollError):
    """Raised when input is invalid; ``errors`` lists ``{loc, msg}`` per offending field."""

    code = "validation_error"
    status = 422

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message, details={"errors": errors})
        self.errors = errors


class ThreadBusyError(AtollError):
    """Raised when a thread already has an alive run and ``multitask`` is ``reject``."""

    code = "thread_busy"
    status = 409


class EmailTakenError(AtollError):
    """Raised when registering an email that already has an account."""

    code = "email_taken"
    status = 409


class AuthenticationError(AtollError):
    """Raised when a token is missing, malformed, forged or for a revoked session."""

    code = "invalid_token"
    status = 401


class InvalidCredentialsError(AuthenticationError):
    """Raised for a wrong password and an unknown email alike."""

    code = "invalid_credentials"


class TokenExpiredError(AuthenticationError):
    """Raised when a token's ``exp`` has passed."""

    code = "token_expired"


class SessionRevokedError(AuthenticationError):
    """Raised when the token's session was logged out or revoked."""

    code = "session_revoked"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        """Why the session had ended (its ``revoked_reason``), when known; never sent."""


class RefreshReuseError(SessionRevokedError):
    """Raised when a spent refresh token is presented after the reuse interval; the whole
    session is revoked."""

    code = "refresh_reused"


class SignInError(AtollError):
    """A sign-in with an OpenID Provider that cannot complete; ``reason`` says why, in a
    stable word (``state_invalid``, ``invalid_id_token``, ``email_unverified``, …)."""

    code = "sign_in_failed"
    status = 401

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, details={"reason": reason})
        self.reason = reason


class RemovedFromOrgError(AtollError):
    """Raised when a member an organisation removed tries to sign in again."""

    code = "removed_from_org"
    status = 403


class TooManyKeysError(AtollError):
    """Raised when a user already has the most live API keys allowed."""

    code = "too_many_keys"
    status = 409


class InsufficientScopeError(AtollError):
    """Raised when an API key lacks the scope a request needs (or keys may not do it)."""

    code = "insufficient_scope"
    status = 403


class OrgAdminRequiredError(AtollError):
    """Raised when a member who is not an admin of their organisation tries to manage it."""

    code = "org_admin_required"
    status = 403


class LastAdminError(AtollError):
    """Raised when a change would leave an organisation without an admin."""

    code = "last_admin"
    status = 409


class DomainTakenError(AtollError):
    """An email domain another organisation owns already."""

    code = "domain_taken"
    status = 409


class LastSignInError(AtollError):
    """Removing what would leave an account no way to sign in."""

    code = "last_sign_in"
    status = 409


class SSORequiredError(AtollError):
    """Password sign-in for an email whose organisation requires its identity provider."""

    code = "sso_required"
    status = 403


class UnavailableError(AtollError):
    """Raised when a dependency (database, bus) is unreachable; retry later."""

    code = "unavailable"
    status = 503
    retry_after = 5.0


class StorageFullError(UnavailableError):
    """Raised when the database cannot write because its disk is full (SQLite's file system,
    PostgreSQL's ``could not extend file``); reads still work, writes resume once an operator
    frees space (docs/operations.md, "A full disk")."""

    code = "storage_full"
    retry_after = 30.0


class RunLimitError(AtollError):
    """Raised when a user already has the maximum of alive runs and overflow is refused."""

    code = "run_limit"
    status = 429


class TooManyWaitingError(AtollError):
    """Raised when a thread or a user already has the most runs allowed waiting for their turn
    (``scope``: ``thread`` or ``user``; ``limit``): nothing is stored."""

    code = "too_many_waiting"
    status = 429


class RateLimitedError(AtollError):
    """Raised when a per-user rate limit is exceeded; ``retry_after`` is in seconds."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, details={"retry_after": round(retry_after, 3)})
        self.retry_after = retry_after


class QuotaExceededError(RateLimitedError):
    """Raised when the month's token budget of the user's plan (or their organisation's) is
    spent; ``retry_after`` is the time until it renews (the first of next month, UTC)."""

    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after: float, details: dict[str, Any]) -> None:
        super().__init__(message, retry_after=retry_after)
        self.details.update(details)


class CpuBudgetError(RateLimitedError):
    """Raised when a user's runs have spent their CPU budget (``ATOLL_CPU_BUDGET_SECONDS`` per
    ``ATOLL_CPU_BUDGET_PERIOD``); ``retry_after`` is the time until enough has refilled."""

    code = "cpu_budget_exceeded"


class TooManyStreamsError(RateLimitedError):
    """Raised when a user already has the maximum number of open event streams."""

    code = "too_many_streams"


class TooManySocketsError(RateLimitedError):
    """Raised when a client address already has the maximum number of open WebSockets (or
    of WebSockets that have not authenticated yet)."""

    code = "too_many_sockets"


class HeadersTooLargeError(AtollError):
    """Raised when a request's head (its request line and headers) is over the size or
    count limits; answered 431 before the request reaches the app."""

    code = "headers_too_large"
    status = 431


class MalformedRequestError(AtollError):
    """Raised when a request is not valid HTTP/1.1 (a control character in a header, a
    broken request line …); answered 400 before the request reaches the app."""

    code = "malformed_request"
    status = 400


class UriTooLongError(AtollError):
    """Raised when a request line (method, target, version) is over the line limit;
    answered 414 before the request reaches the app."""

    code = "uri_too_long"
    status = 414


class EventConflictError(AtollError):
    """Raised when a run's ``seq`` is already logged: another process ended the run.

    Scaled out, a worker the cluster presumed dead may wake up and try to log
    events of a run a sweeper has already ended; the log refuses them.
    """

    code = "event_conflict"
    status = 409


class RunClosedError(AtollError):
    """Raised when something tries to emit an event after the run's terminal event."""

    code = "run_closed"
    status = 409


class AgentNotFoundError(AtollError):
    """Raised when a run names an agent the registry does not know."""

    code = "unknown_agent"
    status = 422


class AgentForbiddenError(AtollError):
    """Raised when the user's plan does not include the agent."""

    code = "agent_forbidden"
    status = 403


class AgentDepthError(InvalidContextError):
    """Raised when sub-agent calls nest deeper than the context allows."""

    code = "agent_depth_exceeded"
    status = 422


class ToolError(AtollError):
    """Raised by a tool to report a failure whose message is safe to show the user."""

    code = "tool_error"
    status = 400


class ToolNotFoundError(ToolError):
    """Raised when an LLM or agent asks for a tool that does not exist."""

    code = "unknown_tool"


class ToolValidationError(ToolError):
    """Raised when tool arguments do not match the tool's schema."""

    code = "invalid_arguments"
    status = 422


class ToolPermissionError(ToolError):
    """Raised when the user's plan or roles do not allow the tool."""

    code = "tool_forbidden"
    status = 403


class ToolTimeoutError(ToolError):
    """Raised when a tool runs longer than its timeout."""

    code = "tool_timeout"
    status = 504


class LLMError(AtollError):
    """Raised when the language-model provider fails or answers something unusable."""

    code = "llm_error"
    status = 502


class RunTimeoutError(AtollError):
    """Raised inside a run that exceeded the run timeout."""

    code = "run_timeout"
    status = 504


class RunDeadError(AtollError):
    """Describes a run whose heartbeat stopped (crashed worker or blocked event loop)."""

    code = "run_dead"
    status = 500


class RunInterruptedError(AtollError):
    """Describes a run stopped in a state from which it could not end as asked."""

    code = "interrupted"
    status = 500


class WorkerLostError(AtollError):
    """Describes a run whose worker died after the run had begun."""

    code = "worker_lost"
    status = 500


class QueueTimeoutError(AtollError):
    """Describes a queued run that no worker took within the queue timeout."""

    code = "queue_timeout"
    status = 504


class SubAgentError(AtollError):
    """Raised by ``call_agent`` when a sub-agent fails; ``error`` is its error dict."""

    code = "sub_agent_failed"

    def __init__(self, agent: str, error: dict[str, Any]) -> None:
        super().__init__(
            f"sub-agent {agent} failed: {error.get('message')}", details={"agent": agent}
        )
        self.agent = agent
        self.error = error
