"""Threads, messages and runs: every query is scoped to the owner.

A thread, message or run of another user is indistinguishable from a missing
one: both raise ``NotFoundError``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from atoll.errors import NotFoundError, ValidationFailedError
from atoll.runtime.ids import new_id
from atoll.runtime.state import ALIVE_STATES
from atoll.store.db import Database
from atoll.store.models import Message, Run, RunEventRow, Thread, utcnow

ALIVE = [s.value for s in ALIVE_STATES]
T = TypeVar("T")


def encode_cursor(pk: int) -> str:
    """An opaque pagination cursor for row ``pk``."""
    return base64.urlsafe_b64encode(str(pk).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The row key inside a cursor; ``ValidationFailedError`` when it is not one of ours."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        value = int(raw)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValidationFailedError(
            "invalid cursor", [{"loc": ["query", "cursor"], "msg": "not a valid cursor"}]
        ) from None
    return value


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of rows and the cursor of the next one."""

    items: list[T]
    next_cursor: str | None


class ChatStore:
    """Owner-scoped access to threads, messages and runs."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- threads -------------------------------------------------------------

    async def create_thread(
        self, session: AsyncSession, user_id: str, *, title: str | None, meta: dict[str, Any]
    ) -> Thread:
        """Add a new thread to ``session``."""
        now = utcnow()
        thread = Thread(
            id=new_id("thr"),
            user_id=user_id,
            title=title,
            meta=meta,
            created_at=now,
            updated_at=now,
        )
        session.add(thread)
        await session.flush()
        return thread

    async def thread(self, session: AsyncSession, user_id: str, thread_id: str) -> Thread:
        """The user's thread ``thread_id``; ``NotFoundError`` otherwise."""
        query = select(Thread).where(Thread.id == thread_id, Thread.user_id == user_id)
        thread = (await session.execute(query)).scalar()
        if thread is None:
            raise NotFoundError("thread not found")
        return thread

    async def list_threads(self, user_id: str, *, limit: int, cursor: str | None) -> Page[Thread]:
        """The user's threads, newest first."""
        before = decode_cursor(cursor)
        query = select(Thread).where(Thread.user_id == user_id)
        if before is not None:
            query = query.where(Thread.pk < before)
        query = query.order_by(Thread.pk.desc()).limit(limit + 1)
        async with self.db.session() as session:
            rows = list((await session.execute(query)).scalars().all())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, encode_cursor(rows[-1].pk) if more and rows else None)

    async def delete_thread(self, user_id: str, thread_id: str) -> list[str]:
        """Delete the thread, its messages, runs and events; returns its run ids."""
        async with self.db.transaction() as session:
            thread = await self.thread(session, user_id, thread_id)
            run_ids = list(
                (await session.execute(select(Run.id).where(Run.thread_id == thread.id)))
                .scalars()
                .all()
            )
            if run_ids:
                await session.execute(delete(RunEventRow).where(RunEventRow.run_id.in_(run_ids)))
            await session.execute(delete(Run).where(Run.thread_id == thread.id))
            await session.execute(delete(Message).where(Message.thread_id == thread.id))
            await session.delete(thread)
        return run_ids

    # -- messages ------------------------------------------------------------

    async def list_messages(
        self, user_id: str, thread_id: str, *, limit: int, cursor: str | None
    ) -> Page[Message]:
        """The thread's messages, oldest first."""
        after = decode_cursor(cursor)
        async with self.db.session() as session:
            await self.thread(session, user_id, thread_id)
            query = select(Message).where(Message.thread_id == thread_id)
            if after is not None:
                query = query.where(Message.pk > after)
            query = query.order_by(Message.pk).limit(limit + 1)
            rows = list((await session.execute(query)).scalars().all())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, encode_cursor(rows[-1].pk) if more and rows else None)

    async def history(self, thread_id: str, *, before_pk: int, limit: int = 40) -> list[Message]:
        """Up to ``limit`` messages of the thread before ``before_pk``, oldest first."""
        query = (
            select(Message)
            .where(Message.thread_id == thread_id, Message.pk < before_pk)
            .order_by(Message.pk.desc())
            .limit(limit)
        )
        async with self.db.session() as session:
            rows = list((await session.execute(query)).scalars().all())
        return rows[::-1]

    async def message_by_client_id(
        self, session: AsyncSession, user_id: str, client_id: str
    ) -> Message | None:
        """The user's message sent with ``client_id`` (idempotent resends)."""
        query = select(Message).where(Message.user_id == user_id, Message.client_id == client_id)
        return (await session.execute(query)).scalar()

    async def add_assistant_message(
        self, *, message_id: str, thread_id: str, user_id: str, run_id: str, content: str
    ) -> None:
        """Store an agent's answer."""
        async with self.db.transaction() as session:
            session.add(
                Message(
                    id=message_id,
                    thread_id=thread_id,
                    user_id=user_id,
                    role="assistant",
                    content=content,
                    run_id=run_id,
                    created_at=utcnow(),
                )
            )
            await session.execute(
                update(Thread).where(Thread.id == thread_id).values(updated_at=utcnow())
            )

    # -- runs ----------------------------------------------------------------

    async def run(self, user_id: str, run_id: str) -> Run:
        """The user's run ``run_id``; ``NotFoundError`` otherwise."""
        async with self.db.session() as session:
            query = select(Run).where(Run.id == run_id, Run.user_id == user_id)
            run = (await session.execute(query)).scalar()
        if run is None:
            raise NotFoundError("run not found")
        return run

    async def alive_runs(self, session: AsyncSession, thread_id: str) -> Sequence[Run]:
        """The thread's runs that are not terminal."""
        query = select(Run).where(Run.thread_id == thread_id, Run.state.in_(ALIVE))
        return (await session.execute(query)).scalars().all()

    async def all_alive_runs(self) -> Sequence[Run]:
        """Every run not terminal (after a crash: runs that will never finish)."""
        async with self.db.session() as session:
            return (await session.execute(select(Run).where(Run.state.in_(ALIVE)))).scalars().all()

    async def finish_run(
        self,
        run_id: str,
        *,
        state: str,
        error: dict[str, Any] | None,
        started_at: datetime | None,
        finished_at: datetime,
        answer_message_id: str | None,
    ) -> None:
        """Record a run's terminal state."""
        async with self.db.transaction() as session:
            await session.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(
                    state=state,
                    error=error,
                    started_at=started_at,
                    finished_at=finished_at,
                    answer_message_id=answer_message_id,
                )
            )
