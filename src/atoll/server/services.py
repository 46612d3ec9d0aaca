"""The container of everything one app instance owns, built in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from atoll.aio import run_every, settle_task
from atoll.auth.keys import ApiKeys
from atoll.auth.oidc import OIDCProvider
from atoll.auth.org_admin import OrgAdmin
from atoll.auth.passwords import Passwords
from atoll.auth.principal import Principal
from atoll.auth.service import AuthService, LoginLimits
from atoll.auth.sessions import SessionCache
from atoll.auth.signin import SignInService
from atoll.auth.tokens import TokenCodec, load_or_create_secret
from atoll.bus.memory import (
    EventSubscriptions,
    InMemoryEventBus,
    LocalSubscriptions,
    MemorySubscription,
)
from atoll.bus.redis import RedisEventRelay
from atoll.config import Settings
from atoll.errors import ConfigurationError
from atoll.ratelimit import CostBudget, LocalCostBudget, LocalRateLimiter, SlidingWindowCounter
from atoll.runtime.agents.base import AgentRegistry
from atoll.runtime.builtins import builtin_registry
from atoll.runtime.context import UserExecutionContext
from atoll.runtime.engine import StartHook
from atoll.runtime.events import EventRecorder, RunEventBus
from atoll.runtime.factory import ExecutionEngineFactory
from atoll.runtime.limits import RuntimeLimits
from atoll.runtime.llm.base import LLMProvider
from atoll.runtime.llm.providers import build_llm_provider
from atoll.runtime.plans import Plan, PlanCatalog
from atoll.runtime.plugins import load_plugins
from atoll.runtime.tools.knowledge import KnowledgeBase
from atoll.server.cluster import Cluster, connected_cluster, process_id
from atoll.server.connections import ConnectionRegistry, SocketsPerAddress, StreamSlots
from atoll.server.consumer import RunConsumer
from atoll.server.dispatch import LocalRunDispatch, QueueRunDispatch, RunDispatch
from atoll.server.metrics import Metrics
from atoll.server.notices import UserNotices
from atoll.server.runs import STALL_AFTER, RunService
from atoll.server.session_watch import Revocations, SessionWatch
from atoll.server.sweeper import Sweeper
from atoll.server.worker import Worker
from atoll.store.audit import AuditLog
from atoll.store.chat import ChatStore
from atoll.store.db import Database, sqlite_url
from atoll.store.event_log import DatabaseRunEventLog
from atoll.store.models import utcnow
from atoll.store.orgs import OrgStore
from atoll.store.runs import RunStore
from atoll.store.usage import UsageStore
from atoll.telemetry import Tracing, tracing_from_environment

if TYPE_CHECKING:
    from atoll.runtime.tools.mcp import McpServer

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """What the routes use; one per app, passed through ``app.state.services``."""

    settings: Settings
    db: Database
    event_log: DatabaseRunEventLog
    bus: InMemoryEventBus
    registry: AgentRegistry
    factory: ExecutionEngineFactory
    auth: AuthService
    signin: SignInService
    orgs: OrgStore
    org_admin: OrgAdmin
    usage: UsageStore
    plans: PlanCatalog
    keys: ApiKeys
    audit: AuditLog
    chat: ChatStore
    runs: RunService
    connections: ConnectionRegistry
    metrics: Metrics
    streams: StreamSlots
    sockets: SocketsPerAddress
    notices: UserNotices
    tracing: Tracing
    watch: SessionWatch
    """What each session has open here (its sockets' and streams' subscriptions)."""
    subscriptions: EventSubscriptions
    """This process's own bus, or (scaled out) the relay that feeds it from Redis."""
    cluster: Cluster | None = None
    accepting: bool = True
    started_at: float = field(default_factory=time.time)
    """When these services were built (seconds since the epoch)."""

    _stopped: asyncio.Event | None = None

    async def stop(self) -> None:
        """Shut down within one grace period (the first caller does it; others wait).

        Stop accepting, close sockets with 1001, give runs ``shutdown_grace`` seconds,
        cancel what is left (each still logs its terminal event, readable on resume),
        then end every SSE stream: with its run's terminal event, or a ``retry`` hint.
        """
        if self._stopped is not None:
            await self._stopped.wait()
            return
        self._stopped = asyncio.Event()
        self.accepting = False
        await self.connections.close_all(1001, "server shutting down")
        await self.runs.drain(self.settings.shutdown_grace)
        await self.factory.aclose("shutdown")
        await self.runs.wait_all()
        self.bus.closing()
        self._stopped.set()

    async def subscribe(self, principal: Principal) -> MemorySubscription:
        """A subscription to ``principal``'s events, wherever they are produced, that ends
        (``SessionEnded``) when the session or key it was opened with ends."""
        subscription = await self.subscriptions.subscribe(principal.user_id)
        self.watch.hold(principal, subscription)
        return subscription


async def build_registry(settings: Settings) -> AgentRegistry:
    """Built-in agents and tools, the configured plugins, and the MCP servers' tools."""
    registry = builtin_registry()
    load_plugins(registry, settings.plugins)
    if settings.mcp_servers:
        from atoll.runtime.tools.mcp import discover_mcp_tools

        registry.register_tools(await discover_mcp_tools(mcp_servers(settings)))
    return registry


def mcp_servers(settings: Settings) -> list[McpServer]:
    """The configured MCP servers, their secrets revealed only here."""
    from atoll.runtime.tools.mcp import McpServer

    def opened(values: dict[str, SecretStr]) -> dict[str, str]:
        return {key: value.get_secret_value() for key, value in values.items()}

    def chosen(values: list[str] | None) -> frozenset[str] | None:
        return frozenset(values) if values is not None else None

    return [
        McpServer(
            name=name,
            command=server.command,
            args=tuple(server.args),
            env=opened(server.env),
            cwd=server.cwd,
            url=server.url,
            headers=opened(server.headers),
            timeout=server.timeout,
            tools=chosen(server.tools),
            plans=chosen(server.plans),
            roles=chosen(server.roles),
            max_message_bytes=settings.mcp_max_result_bytes,
        )
        for name, server in settings.mcp_servers.items()
    ]


async def prune_events(event_log: DatabaseRunEventLog, retention: timedelta) -> None:
    """Delete events older than the retention period."""
    try:
        removed = await event_log.prune(retention)
        if removed:
            logger.info("pruned %d run events older than %s", removed, retention)
    except Exception:
        logger.exception("pruning run events failed")


def token_codec(settings: Settings) -> TokenCodec:
    """The token codec configured by ``settings`` (its key from the settings or data dir)."""
    secret = (
        settings.secret_key.get_secret_value()
        if settings.secret_key
        else load_or_create_secret(settings.data_dir)
    )
    return TokenCodec(
        secret,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        access_ttl=settings.access_token_ttl,
        refresh_ttl=settings.refresh_token_ttl,
    )


def engine_factory(
    settings: Settings,
    registry: AgentRegistry,
    chat: ChatStore,
    recorder: EventRecorder,
    llm: LLMProvider,
    cluster: Cluster | None,
    *,
    usage: UsageStore,
    start_hook: StartHook | None = None,
    tracing: Tracing | None = None,
) -> ExecutionEngineFactory:
    """The process's engine factory; scaled out, its limits live in Redis."""

    async def admit(context: UserExecutionContext, plan: Plan) -> None:
        await usage.check(context.user_id, plan, utcnow())

    async def count(context: UserExecutionContext, tokens: int) -> None:
        await usage.add(context.user_id, tokens, utcnow())

    async def store_answer(context: UserExecutionContext, message_id: str, content: str) -> None:
        await chat.add_assistant_message(
            message_id=message_id,
            thread_id=context.thread_id,
            user_id=context.user_id,
            run_id=context.run_id,
            content=content,
        )

    return ExecutionEngineFactory(
        registry=registry,
        llm=llm,
        recorder=recorder,
        limits=RuntimeLimits.from_settings(settings),
        slots=cluster.slots if cluster is not None else None,
        tool_rate_limiter=cluster.tool_limiter if cluster is not None else None,
        resources={KnowledgeBase: KnowledgeBase(settings.knowledge_dirs)},
        completion_hook=store_answer,
        start_hook=start_hook,
        plans=PlanCatalog.from_settings(settings),
        admission=admit,
        usage_hook=count,
        tracing=tracing,
    )


def database_of(settings: Settings) -> Database:
    """The (not yet started) database ``settings`` name: ``ATOLL_DATABASE_URL`` or the SQLite
    file in the data directory."""
    return Database(
        settings.database_url or sqlite_url(settings.data_dir),
        min_free_bytes=int(settings.min_free_mb * (1 << 20)),
    )


@contextlib.asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """The migrated, started database of ``settings``; disposed at the end."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.redis_url is not None and not (settings.database_url or "").startswith("postgres"):
        logger.warning(
            "ATOLL_REDIS_URL is set but the database is not PostgreSQL: API nodes and workers "
            "must share one database; SQLite only works with all processes on one machine"
        )
    db = database_of(settings)
    await db.upgrade()
    db.start()
    try:
        yield db
    finally:
        await db.dispose()


def build_auth(
    settings: Settings,
    db: Database,
    audit: AuditLog,
    orgs: OrgStore,
    cluster: Cluster | None,
    watch: SessionWatch,
) -> AuthService:
    """The one ``AuthService`` of a process (its limits shared through Redis when scaled out;
    the sessions it ends end their sockets and streams through ``watch``)."""
    return AuthService(
        db,
        token_codec(settings),
        Passwords(time_cost=settings.password_time_cost, memory_kib=settings.password_memory_kib),
        audit,
        failures=cluster.login_failures
        if cluster is not None
        else SlidingWindowCounter(settings.login_failures_window),
        limits=LoginLimits(
            per_email=settings.login_failures_limit,
            per_address=settings.login_failures_per_address,
            per_account=settings.login_failures_per_account,
        ),
        signups=cluster.signup_limiter
        if cluster is not None
        else LocalRateLimiter(settings.signups_per_hour, 3600.0),
        sessions=watch.cache,
        revocations=Revocations(watch, cluster.revocations if cluster is not None else None),
        orgs=orgs,
        default_plan=settings.default_plan,
        refresh_reuse=settings.refresh_reuse_seconds,
    )


def build_org_admin(
    settings: Settings, orgs: OrgStore, auth: AuthService, audit: AuditLog
) -> OrgAdmin:
    """Organisation administration, with the configured plans and providers."""
    return OrgAdmin(
        orgs,
        auth,
        audit,
        PlanCatalog.from_settings(settings),
        providers=frozenset(p.name for p in settings.oidc_providers),
    )


@dataclass
class Operator:
    """What the operator's commands (``atoll user``, ``atoll org``) work with: accounts and
    organisations, never runs — a command run beside a live server must not touch them."""

    auth: AuthService
    orgs: OrgStore
    org_admin: OrgAdmin


@contextlib.asynccontextmanager
async def running_operator(settings: Settings) -> AsyncIterator[Operator]:
    """The database (and, scaled out, Redis for revocations) and the account services, for
    one operator command; no runs recovered, no background work started."""
    async with contextlib.AsyncExitStack() as stack:
        db = await stack.enter_async_context(open_database(settings))
        cluster = (
            await stack.enter_async_context(
                connected_cluster(settings, node_id=process_id("operator"))
            )
            if settings.redis_url is not None
            else None
        )
        audit = AuditLog(db)
        orgs = OrgStore(db)
        watch = SessionWatch(SessionCache(settings.session_cache_seconds))  # no sockets here
        auth = build_auth(settings, db, audit, orgs, cluster, watch)
        yield Operator(auth, orgs, build_org_admin(settings, orgs, auth, audit))


@contextlib.asynccontextmanager
async def running_services(
    settings: Settings, tracing: Tracing | None = None
) -> AsyncIterator[Services]:
    """Build, start, and finally stop everything one app needs (``tracing``: from the
    environment unless given)."""
    tracing = tracing or tracing_from_environment()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(tracing.aclose)
        db = await stack.enter_async_context(open_database(settings))
        node_id = process_id("node")
        cluster = (
            await stack.enter_async_context(connected_cluster(settings, node_id=node_id))
            if settings.redis_url is not None
            else None
        )
        audit = AuditLog(db)
        orgs = OrgStore(db)
        session_cache = SessionCache(settings.session_cache_seconds)
        watch = SessionWatch(session_cache)
        auth = build_auth(settings, db, audit, orgs, cluster, watch)
        chat = ChatStore(db, audit)
        local_bus = InMemoryEventBus(max_queue=settings.ws_send_queue * 4)
        llm = build_llm_provider(settings)
        stack.push_async_callback(llm.aclose)
        event_log = DatabaseRunEventLog(db)
        bus: RunEventBus = cluster.bus if cluster is not None else local_bus
        usage = UsageStore(db)
        recorder = EventRecorder(event_log, bus)
        registry = await build_registry(settings)
        factory = engine_factory(
            settings, registry, chat, recorder, llm, cluster, usage=usage, tracing=tracing
        )
        assert factory.plans is not None
        run_store = run_store_of(settings, db)
        dispatch: RunDispatch
        cpu_budget: CostBudget
        if cluster is None:
            cpu_budget = LocalCostBudget(settings.cpu_budget_seconds, settings.cpu_budget_period)
            consumer = RunConsumer(
                store=run_store,
                factory=factory,
                bus=local_bus,
                consumer_id=node_id,
                capacity=settings.run_capacity,
                cpu_budget=cpu_budget,
            )
            dispatch = LocalRunDispatch(consumer, factory)
        else:
            cpu_budget = cluster.cpu_budget
            dispatch = QueueRunDispatch(cluster)
        notices = UserNotices(local_bus, cluster.bus if cluster is not None else None)
        runs = RunService(
            chat=chat,
            notices=notices,
            store=run_store,
            factory=factory,
            audit=audit,
            message_limiter=cluster.message_limiter
            if cluster is not None
            else LocalRateLimiter(settings.messages_per_minute, 60.0),
            runs=dispatch,
            cpu_budget=cpu_budget,
            plans=factory.plans,
            usage=usage,
        )
        metrics = Metrics(factory.tracker)
        connections = ConnectionRegistry(settings.max_ws_connections, metrics)
        subscriptions: EventSubscriptions
        if cluster is None:
            subscriptions = LocalSubscriptions(local_bus)
            factory.processes.start()  # this process executes runs: no cold tool start
            await runs.recover()
            stalled = partial(run_every, STALL_AFTER, step=runs.start_stalled)
            background(stack, stalled, "atoll-stalled-runs")
        else:
            session_cache.distrust()  # until the revocation channel is subscribed

            async def revoked(session_id: str, reason: str) -> None:
                """A session ended on some node: refuse its tokens, end its sockets and
                streams here."""
                watch.end(session_id, reason)

            listen = partial(
                cluster.revocations.listen,
                revoked=revoked,
                subscribed=session_cache.trust,
                lost=session_cache.distrust,
            )
            background(stack, listen, "atoll-session-revocations")
            relay = RedisEventRelay(cluster.redis, local_bus, node_id=node_id)
            relay.start()
            stack.push_async_callback(relay.aclose)
            subscriptions = relay
            sweeper = build_sweeper(settings, cluster, run_store)
            background(
                stack, partial(sweeper.run_forever, settings.sweep_interval), "atoll-sweeper"
            )
        services = Services(
            settings=settings,
            db=db,
            event_log=event_log,
            bus=local_bus,
            registry=factory.registry,
            factory=factory,
            auth=auth,
            orgs=orgs,
            org_admin=build_org_admin(settings, orgs, auth, audit),
            usage=usage,
            plans=factory.plans,
            keys=ApiKeys(db, audit),
            signin=SignInService(
                db,
                auth,
                audit,
                [OIDCProvider(provider) for provider in settings.oidc_providers],
                redirect_origins=settings.login_redirect_origins,
            ),
            audit=audit,
            chat=chat,
            runs=runs,
            connections=connections,
            metrics=metrics,
            streams=StreamSlots(settings.max_sse_streams),
            sockets=SocketsPerAddress(
                settings.max_sockets_per_address, settings.max_unauthenticated_sockets_per_address
            ),
            notices=notices,
            tracing=tracing,
            watch=watch,
            cluster=cluster,
            subscriptions=subscriptions,
        )
        await stack.enter_async_context(factory)
        check = partial(watch.watch, ended=auth.ended, interval=settings.session_check_seconds)
        background(stack, check, "atoll-session-check")
        retention = timedelta(hours=settings.event_retention_hours)
        prune = partial(prune_events, event_log, retention)
        background(stack, partial(run_every, 3600.0, step=prune), "atoll-event-pruner")
        try:
            yield services
        finally:
            await services.stop()


def run_store_of(settings: Settings, db: Database) -> RunStore:
    """The run store with the waiting bounds of ``settings``; with ``run_overflow=wait`` a run
    waits for its user's slot in the database (held by nothing), not in memory."""
    plans = PlanCatalog.from_settings(settings)

    def runs_at_once(plan: str | None) -> int:
        return plans.get(plan or plans.default).runs_at_once

    return RunStore(
        db,
        waiting=settings.max_waiting_runs,
        waiting_per_thread=settings.max_waiting_runs_per_thread,
        runs_at_once=runs_at_once if settings.run_overflow == "wait" else None,
    )


def build_sweeper(settings: Settings, cluster: Cluster, store: RunStore) -> Sweeper:
    """The dead-worker sweeper every scaled-out process runs."""
    return Sweeper(
        cluster=cluster,
        store=store,
        bus=cluster.bus,
        retries=settings.run_retries,
        queue_timeout=settings.queue_timeout,
    )


def background(
    stack: contextlib.AsyncExitStack,
    loop: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    name: str,
) -> None:
    """Run ``loop(stop)`` as a task until ``stack`` closes: then set ``stop`` and settle it."""
    stop = asyncio.Event()
    task = asyncio.create_task(loop(stop), name=name)

    async def finish() -> None:
        stop.set()
        await settle_task(task, 10.0)

    stack.push_async_callback(finish)


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Worker]:
    """Everything an ``atoll worker`` process needs; stopped at the end."""
    if settings.redis_url is None:
        raise ConfigurationError("atoll worker needs ATOLL_REDIS_URL (and a shared database)")
    async with contextlib.AsyncExitStack() as stack:
        db = await stack.enter_async_context(open_database(settings))
        worker_id = settings.worker_id or process_id("worker")
        cluster = await stack.enter_async_context(connected_cluster(settings, node_id=worker_id))
        chat = ChatStore(db, AuditLog(db))
        store = run_store_of(settings, db)
        llm = build_llm_provider(settings)
        stack.push_async_callback(llm.aclose)
        event_log = DatabaseRunEventLog(db)

        recorder = EventRecorder(event_log, cluster.bus)
        registry = await build_registry(settings)
        tracing = tracing_from_environment()
        stack.push_async_callback(tracing.aclose)
        factory = engine_factory(
            settings, registry, chat, recorder, llm, cluster,
            usage=UsageStore(db), tracing=tracing,
        )  # fmt: skip
        await stack.enter_async_context(factory)
        factory.processes.start()  # warm tool workers: no call waits for a cold start
        yield Worker(
            settings=settings,
            cluster=cluster,
            store=store,
            factory=factory,
            sweeper=build_sweeper(settings, cluster, store),
            worker_id=worker_id,
        )
