"""The container of everything one app instance owns, built in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from atoll.auth.passwords import Passwords
from atoll.auth.service import AuthService
from atoll.auth.tokens import TokenCodec, load_or_create_secret
from atoll.bus.memory import InMemoryEventBus
from atoll.config import Settings
from atoll.ratelimit import LocalRateLimiter, SlidingWindowCounter
from atoll.runtime.agents.base import AgentRegistry
from atoll.runtime.builtins import builtin_registry
from atoll.runtime.events import EventRecorder
from atoll.runtime.factory import ExecutionEngineFactory
from atoll.runtime.limits import RuntimeLimits
from atoll.runtime.llm.providers import build_llm_provider
from atoll.runtime.plugins import load_plugins
from atoll.runtime.tools.knowledge import KnowledgeBase
from atoll.server.connections import ConnectionRegistry
from atoll.server.metrics import Metrics
from atoll.server.runs import RunService
from atoll.store.audit import AuditLog
from atoll.store.chat import ChatStore
from atoll.store.db import Database, sqlite_url
from atoll.store.event_log import DatabaseRunEventLog

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
    audit: AuditLog
    chat: ChatStore
    runs: RunService
    connections: ConnectionRegistry
    metrics: Metrics
    accepting: bool = True


def build_registry(settings: Settings) -> AgentRegistry:
    """Built-in agents and tools plus the configured plugins."""
    registry = builtin_registry()
    load_plugins(registry, settings.plugins)
    return registry


async def prune_events(event_log: DatabaseRunEventLog, retention: timedelta) -> None:
    """Delete events older than the retention period, once at start and then hourly."""
    while True:
        try:
            removed = await event_log.prune(retention)
            if removed:
                logger.info("pruned %d run events older than %s", removed, retention)
        except Exception:
            logger.exception("pruning run events failed")
        await asyncio.sleep(3600)


@contextlib.asynccontextmanager
async def running_services(settings: Settings) -> AsyncIterator[Services]:
    """Build, start, and finally stop everything one app needs."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    registry = build_registry(settings)
    db = Database(settings.database_url or sqlite_url(settings.data_dir))
    await db.upgrade()
    secret = (
        settings.secret_key.get_secret_value()
        if settings.secret_key
        else load_or_create_secret(settings.data_dir)
    )
    codec = TokenCodec(
        secret,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        access_ttl=settings.access_token_ttl,
        refresh_ttl=settings.refresh_token_ttl,
    )
    audit = AuditLog(db)
    auth = AuthService(
        db,
        codec,
        Passwords(),
        audit,
        failures=SlidingWindowCounter(settings.login_failures_window),
        failures_limit=settings.login_failures_limit,
    )
    chat = ChatStore(db, audit)
    bus = InMemoryEventBus(max_queue=settings.ws_send_queue * 4)
    llm = build_llm_provider(settings)
    async with contextlib.AsyncExitStack() as stack:
        db.start()
        stack.push_async_callback(db.dispose)
        stack.push_async_callback(llm.aclose)
        event_log = DatabaseRunEventLog(db)

        async def store_answer(context: object, message_id: str, content: str) -> None:
            from atoll.runtime.context import UserExecutionContext

            assert isinstance(context, UserExecutionContext)
            await chat.add_assistant_message(
                message_id=message_id,
                thread_id=context.thread_id,
                user_id=context.user_id,
                run_id=context.run_id,
                content=content,
            )

        factory = ExecutionEngineFactory(
            registry=registry,
            llm=llm,
            recorder=EventRecorder(event_log, bus),
            limits=RuntimeLimits.from_settings(settings),
            resources={KnowledgeBase: KnowledgeBase(settings.knowledge_dirs)},
            completion_hook=store_answer,
        )
        runs = RunService(
            chat=chat,
            factory=factory,
            event_log=event_log,
            audit=audit,
            message_limiter=LocalRateLimiter(settings.messages_per_minute, 60.0),
        )
        await runs.recover()
        metrics = Metrics(factory.tracker)
        services = Services(
            settings=settings,
            db=db,
            event_log=event_log,
            bus=bus,
            registry=registry,
            factory=factory,
            auth=auth,
            audit=audit,
            chat=chat,
            runs=runs,
            connections=ConnectionRegistry(settings.max_ws_connections, metrics),
            metrics=metrics,
        )
        await stack.enter_async_context(factory)
        pruner = asyncio.create_task(
            prune_events(event_log, timedelta(hours=settings.event_retention_hours)),
            name="atoll-event-pruner",
        )
        stack.callback(pruner.cancel)
        try:
            yield services
        finally:
            services.accepting = False
            await services.connections.close_all(1001, "server shutting down")
            await runs.drain(settings.shutdown_grace)
            await factory.aclose("shutdown")
            await runs.wait_all()
