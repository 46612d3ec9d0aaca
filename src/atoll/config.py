"""The one ``Settings`` object: every option, read from ``ATOLL_*`` environment variables."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLAN_NAME = r"[a-z0-9][a-z0-9_-]{0,31}"
"""What a plan may be called (it is stored in 32 characters)."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names this machine: ``localhost``, 127.0.0.0/8 or ``::1`` (literally:
    no name is resolved, so DNS cannot make a remote host count as loopback)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OIDCProviderSettings(BaseModel):
    """One OpenID Provider people may sign in with (see docs/auth.md)."""

    model_config = {"extra": "forbid"}

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="In URLs: /oidc/{name}")
    display_name: str = Field(min_length=1, max_length=100, description='"Sign in with …"')
    issuer: str = Field(pattern=r"^https?://[^\s?#]+$", description="Its discovery base URL")
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    scopes: str = "openid email profile"
    allow_linking: bool = Field(
        False,
        description="Link a first sign-in to an existing password account with the same "
        "verified email (only for providers that own their users' email addresses)",
    )
    allow_insecure_http: bool = Field(
        False,
        description="Accept a plain http:// issuer on a host other than loopback (a test "
        "network only: anyone on the path can then forge sign-ins)",
    )

    def plain_http_allowed(self) -> bool:
        """Whether this provider may be reached over plain HTTP (its issuer on loopback, or
        ``allow_insecure_http``); its discovery may name http:// endpoints only then."""
        return self.allow_insecure_http or is_loopback_url(self.issuer)

    @model_validator(mode="after")
    def _https_issuer(self) -> OIDCProviderSettings:
        """Refuse a plain http:// issuer at start, naming the provider (see docs/auth.md)."""
        if self.issuer.startswith("http://") and not self.plain_http_allowed():
            raise ValueError(
                f"OpenID provider {self.name!r}: issuer {self.issuer} is plain http:// on a host "
                "that is not loopback; use https:// (or, on a test network only, set "
                '"allow_insecure_http": true for this provider)'
            )
        return self


class PlanSettings(BaseModel):
    """What one plan allows (see docs/auth.md, "Plans"); unset limits are the server's."""

    model_config = {"extra": "forbid"}

    tools: list[str] | None = Field(None, description="Tools its users may call; unset: all")
    agents: list[str] | None = Field(None, description="Agents its users may run; unset: all")
    runs_at_once: int | None = Field(
        None, ge=1, le=10_000, description="Runs per user at once; unset: max_concurrent_runs"
    )
    messages_per_minute: int | None = Field(
        None, ge=1, le=100_000, description="Messages per user per minute; unset: the server's"
    )
    monthly_tokens: int | None = Field(
        None, ge=0, le=10**15, description="Model tokens per user per calendar month; unset: no cap"
    )
    org_monthly_tokens: int | None = Field(
        None,
        ge=0,
        le=10**15,
        description="Model tokens per organisation (its members together) per month; unset: no cap",
    )


MCP_SERVER_NAME = r"[a-z][a-z0-9_-]{0,23}"


class McpServerSettings(BaseModel):
    """One MCP server whose tools become Atoll tools (docs/integrations.md, "MCP tools"):
    a stdio ``command`` (with ``args``, ``env``, ``cwd``) or a streamable-HTTP ``url``
    (with ``headers``), never both."""

    model_config = {"extra": "forbid"}

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, SecretStr] = Field(default_factory=dict)
    cwd: Path | None = None
    url: str | None = Field(None, pattern=r"^https?://")
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout: float | None = Field(
        None, gt=0, description="Seconds per call (default: tool_timeout)"
    )
    tools: list[str] | None = Field(None, description="Only these of the server's tools")
    plans: list[str] | None = Field(None, description="Only users on these plans")
    roles: list[str] | None = Field(None, description="Only users holding one of these roles")

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError("an MCP server needs exactly one of command (stdio) or url (HTTP)")
        return self


def default_plans() -> dict[str, PlanSettings]:
    """The plans an unconfigured server offers: free has the server's limits and no cap."""
    return {
        "free": PlanSettings(),
        "pro": PlanSettings(runs_at_once=10, messages_per_minute=120),
        "enterprise": PlanSettings(runs_at_once=20, messages_per_minute=300),
    }


class Settings(BaseSettings):
    """Atoll's configuration. Every field is ``ATOLL_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="ATOLL_", extra="ignore")

    data_dir: Path = Field(Path("./atoll-data"), description="Where the SQLite file and keys live")
    database_url: str | None = Field(None, description="Default: SQLite file in data_dir")
    min_free_mb: float = Field(
        64,
        ge=0,
        description="SQLite: /readyz reports storage_full when its file system has less free "
        "space (MiB) than this (docs/operations.md, 'A full disk')",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    secret_key: SecretStr | None = Field(None, description="Default: generated in data_dir")
    jwt_issuer: str = "atoll"
    jwt_audience: str = "atoll-api"
    access_token_ttl: float = Field(15 * 60, gt=0)
    refresh_token_ttl: float = Field(30 * 24 * 3600, gt=0)
    login_failures_limit: int = Field(
        10, ge=1, description="Failed logins for one email from one client address, per window"
    )
    login_failures_per_address: int = Field(
        50, ge=1, description="Failed logins from one client address over all emails, per window"
    )
    login_failures_per_account: int = Field(
        100, ge=1, description="Failed logins for one email from all addresses, per window"
    )
    login_failures_window: float = Field(15 * 60, gt=0)
    refresh_reuse_seconds: float = Field(
        10.0,
        ge=0,
        le=300,
        description="A spent refresh token presented again within this many seconds gets the "
        "same new pair (two tabs, a retried request); after it, the session is revoked; 0: never",
    )
    session_cache_seconds: float = Field(
        10.0,
        ge=0,
        description="How long a verified session is reused without a database read (revocations "
        "in Atoll apply at once; other changes to the database within this time); 0: never",
    )
    session_check_seconds: float = Field(
        0.5,
        gt=0,
        le=60,
        description="How often a server asks the database which sessions its sockets and streams "
        "were opened with have ended (by another process: `atoll org remove` beside a single "
        "`atoll serve`); revocations made by a server reach every node at once",
    )
    signups_per_hour: int = Field(20, ge=1, description="Sign-ups per client address per hour")
    password_time_cost: int = Field(
        2, ge=1, le=100, description="argon2id passes over memory per password hash"
    )
    password_memory_kib: int = Field(
        19_456,
        ge=64,
        le=4 * 1024 * 1024,
        description="argon2id memory per password hash, in KiB (the default, 19 MiB with 2 "
        "passes, is OWASP's minimum: raise both as the hardware allows)",
    )
    forwarded_allow_ips: str | None = Field(
        None,
        description="Proxies trusted to set X-Forwarded-For (comma-separated IPs, as uvicorn's "
        "--forwarded-allow-ips); unset: the peer address is the client address",
    )

    max_message_chars: int = Field(32_000, ge=1)
    max_ws_connections: int = Field(10, ge=1)
    max_ws_frame_bytes: int = Field(64 * 1024, ge=1024)
    max_sockets_per_address: int = Field(
        256,
        ge=1,
        description="Open WebSockets per client address, per node (signed in or not; HTTP 429 "
        "too_many_sockets on the upgrade beyond it)",
    )
    max_unauthenticated_sockets_per_address: int = Field(
        32,
        ge=1,
        description="Of those, sockets that have not authenticated yet (HTTP 429 beyond it)",
    )
    messages_per_minute: int = Field(60, ge=1)
    ws_auth_timeout: float = Field(10.0, gt=0)
    ws_send_queue: int = Field(1000, ge=10)
    event_retention_hours: float = Field(24.0, gt=0)
    shutdown_grace: float = Field(10.0, ge=0)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body (413 over)")
    max_sse_streams: int = Field(10, ge=1, description="Open SSE streams per user")
    http_header_timeout: float = Field(
        10.0, gt=0, description="Seconds a connection has to send a request's headers (408)"
    )
    http_keepalive_timeout: float = Field(5.0, gt=0, description="Idle keep-alive connections")
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        le=1 << 20,
        description="Largest request head: the request line and every header line together, "
        "plain HTTP and WebSocket upgrades alike (431 over; one line is at most 8,190 bytes)",
    )
    max_headers: int = Field(
        100,
        ge=8,
        le=128,  # the WebSocket handshake parser's own limit
        description="Most header lines in a request, plain HTTP and WebSocket upgrades (431 over)",
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto", description="The event loop of serve and worker: auto is uvloop where installed"
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins (scheme://host[:port]) whose pages may open the WebSocket, besides "
        "the server's own; comma-separated",
    )
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s/?#]+$",
        description="How users reach this server (scheme://host[:port]): the base of the OpenID "
        "Connect redirect URI; unset: taken from each request",
    )
    oidc_providers: list[OIDCProviderSettings] = Field(
        default_factory=list, description="OpenID Providers, as a JSON list"
    )
    oidc_config_file: Path | None = Field(
        None, description='A JSON file {"providers": [...]} with more OpenID Providers'
    )
    login_redirect_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Other origins a sign-in may return to (comma-separated); by default only "
        "paths of this server",
    )
    plans: dict[str, PlanSettings] = Field(
        default_factory=default_plans,
        description="The plans by name, as a JSON object {name: {tools, agents, runs_at_once, "
        "messages_per_minute, monthly_tokens, org_monthly_tokens}}; replaces the defaults",
    )
    default_plan: str = Field(
        "free", description="The plan of users outside an organisation (must be in plans)"
    )
    docs_enabled: bool = Field(True, description="Serve /docs, /redoc and /openapi.json")
    metrics_enabled: bool = Field(True, description="Serve /metrics")
    metrics_token: SecretStr | None = Field(
        None, description="If set, /metrics needs 'Authorization: Bearer <this token>'"
    )

    llm_provider: Literal["offline", "openai"] = "offline"
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str = ""
    llm_timeout: float = Field(120.0, gt=0)
    llm_stream_usage: bool = True
    offline_token_delay: float = Field(0.0, ge=0, description="Seconds between offline deltas")

    max_concurrent_runs: int = Field(3, ge=1)
    run_overflow: Literal["wait", "reject"] = "wait"
    cpu_budget_seconds: float = Field(
        10.0,
        gt=0,
        description="CPU seconds one user's runs may spend on a server per budget period; "
        "past it, their messages are refused (429 cpu_budget_exceeded) until it refills",
    )
    cpu_budget_period: float = Field(60.0, gt=0, description="Seconds the CPU budget refills over")
    run_capacity: int = Field(
        1000,
        ge=1,
        description="Runs one atoll serve executes at once; more wait, the users whose runs "
        "cost least CPU lately first",
    )
    max_waiting_runs: int = Field(
        20, ge=1, description="Runs of one user stored but not yet running, across threads"
    )
    max_waiting_runs_per_thread: int = Field(
        10, ge=1, description="Runs queued behind one another in one thread"
    )
    run_timeout: float = Field(300.0, gt=0)
    heartbeat_timeout: float = Field(30.0, gt=0)
    tool_timeout: float = Field(30.0, gt=0)
    tool_calls_per_minute: int = Field(120, ge=1)
    tool_processes: int = Field(
        default_factory=lambda: os.cpu_count() or 2,
        ge=1,
        description="Worker processes for CPU-bound (plain def) tools; default: one per core",
    )
    tool_processes_warm: bool = Field(
        True,
        description="Start the tool worker processes at start-up (their modules imported) and "
        "replace a killed one at once, so no call waits for a cold start",
    )
    tool_memory_mb: int = Field(
        1024, ge=0, description="Address-space cap of each tool worker process (0: none)"
    )
    tracker_retention: float = Field(
        60.0, ge=0, description="Seconds a finished run stays in the in-memory tracker"
    )

    redis_url: SecretStr | None = Field(
        None, description="Scale-out: Redis for the run queue, events, limits and signals"
    )
    worker_id: str | None = Field(None, description="Default: <hostname>-<pid>-<random>")
    worker_concurrency: int = Field(16, ge=1, description="Runs one worker executes at once")
    worker_metrics_port: int | None = Field(
        None, ge=0, le=65535, description="atoll worker: serve /metrics, /healthz, /readyz here"
    )
    run_retries: int = Field(1, ge=0, description="Re-queues of a run whose worker died early")
    queue_timeout: float = Field(
        600.0, gt=0, description="A queued run no worker claims within this ends as timeout"
    )
    sweep_interval: float = Field(1.0, gt=0, description="Seconds between dead-worker sweeps")

    knowledge_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    plugins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    mcp_servers: dict[str, McpServerSettings] = Field(
        default_factory=dict,
        description="MCP servers whose tools agents may use, as a JSON object {name: {command, "
        "args, env, cwd | url, headers; timeout, tools, plans, roles}}",
    )
    mcp_max_result_bytes: int = Field(
        1 << 20,
        ge=1024,
        le=64 << 20,
        description="The largest message read from an MCP server (a tool's result), counted as "
        "it arrives: past it the call is a tool error and the session ends",
    )
    mcp_config_file: Path | None = Field(
        None, description='A JSON file {"servers": {name: {...}}}, added to mcp_servers'
    )

    @field_validator("redis_url", "database_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``ATOLL_REDIS_URL=`` (empty) means "not set", like leaving it out."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _providers_and_plans(self) -> Settings:
        """Add the providers of ``oidc_config_file`` (names unique) and the servers of
        ``mcp_config_file``; check the plans."""
        if self.oidc_config_file is not None:
            try:
                document = json.loads(self.oidc_config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"oidc_config_file: {exc}") from None
            providers = document.get("providers") if isinstance(document, dict) else None
            if not isinstance(providers, list):
                raise ValueError('oidc_config_file: expected {"providers": [...]}')
            self.oidc_providers = [
                *self.oidc_providers,
                *(OIDCProviderSettings.model_validate(p) for p in providers),
            ]
        if self.mcp_config_file is not None:
            try:
                document = json.loads(self.mcp_config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"mcp_config_file: {exc}") from None
            servers = document.get("servers") if isinstance(document, dict) else None
            if not isinstance(servers, dict):
                raise ValueError('mcp_config_file: expected {"servers": {name: {...}}}')
            for name, server in servers.items():
                if name in self.mcp_servers:
                    raise ValueError(f"MCP server {name!r} is declared twice")
                self.mcp_servers[name] = McpServerSettings.model_validate(server)
        if any(not re.fullmatch(MCP_SERVER_NAME, name) for name in self.mcp_servers):
            raise ValueError(f"MCP server names must match {MCP_SERVER_NAME}")
        if self.default_plan not in self.plans:
            raise ValueError(f"default_plan {self.default_plan!r} is not one of the plans")
        if any(not re.fullmatch(PLAN_NAME, name) for name in self.plans):
            raise ValueError(f"plan names must match {PLAN_NAME}")
        names = [p.name for p in self.oidc_providers]
        if len(names) != len(set(names)):
            raise ValueError("oidc providers: each name may be used once")
        return self

    @field_validator("knowledge_dirs", "plugins", "allowed_origins", "login_redirect_origins",
                     mode="before")  # fmt: skip
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """Accept comma-separated lists from the environment."""
        return _split_csv(value)
