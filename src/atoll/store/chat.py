"""Threads, messages and runs: every query is scoped to the owner.

A thread, message or run of another user is indistinguishable from a missing
one: both raise ``NotFoundError``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import Select, and_, delete, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from atoll.errors import NotFoundError, ValidationFailedError
from atoll.runtime.ids import new_id
from atoll.runtime.state import ALIVE_STATES
from atoll.store.audit import AuditLog
from atoll.store.bounds import ACTIVITY_CURSOR_PATTERN, CURSOR_PATTERN
from atoll.store.db import Database
from atoll.store.models import Feedback, Message, Run, RunEventRow, Thread, ThreadAlias, utcnow
from atoll.store.writer import execute_core, insert_rows

ALIVE = [s.value for s in ALIVE_STATES]
_CURSOR = re.compile(CURSOR_PATTERN)
_ACTIVITY_CURSOR = re.compile(ACTIVITY_CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T = TypeVar("T")
Rating = Literal["up", "down"]
EXPORT_CHUNK = 500
"""Messages an export reads per query."""


def encode_cursor(pk: int) -> str:
    """The pagination cursor of row ``pk`` (opaque to clients; today the row key)."""
    return str(pk)


def decode_cursor(cursor: str | None) -> int | None:
    """The row key inside a cursor; ``ValidationFailedError`` when it is not one of ours."""
    if cursor is None:
        return None
    if not _CURSOR.fullmatch(cursor):
        raise _invalid_cursor()
    return int(cursor)


def _invalid_cursor() -> ValidationFailedError:
    return ValidationFailedError(
        "invalid cursor", [{"loc": ["query", "cursor"], "msg": "not a valid cursor"}]
    )


def encode_activity_cursor(thread: Thread) -> str:
    """The cursor after ``thread`` in the list by last activity: its time and row key."""
    micros = (thread.updated_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{thread.pk}"


def decode_activity_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    """The (last activity, row key) inside a threads cursor."""
    if cursor is None:
        return None
    if not _ACTIVITY_CURSOR.fullmatch(cursor):
        raise _invalid_cursor()
    micros, pk = cursor.split(".")
    return _EPOCH + timedelta(microseconds=int(micros)), int(pk)


def like_pattern(text: str) -> str:
    """``text`` as a LIKE pattern that matches it anywhere, wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of rows and the cursor of the next one."""

    items: list[T]
    next_cursor: str | None


def thread_query(user_id: str, thread_id: str) -> Select[Thread]:
    """The user's thread ``thread_id`` (no row for anyone else)."""
    return select(Thread).where(
        Thread.id == thread_id, Thread.user_id == user_id, Thread.deleted_at.is_(None)
    )


def alive_runs_query(thread_id: str) -> Select[Run]:
    """The thread's runs that are not terminal."""
    return select(Run).where(Run.thread_id == thread_id, Run.state.in_(ALIVE))


HISTORY_LIMIT = 40


def history_query(thread_id: str) -> Select[Message]:
    """The thread's newest ``HISTORY_LIMIT`` messages, newest first."""
    return (
        select(Message)
        .where(Message.thread_id == thread_id)
        .order_by(Message.pk.desc())
        .limit(HISTORY_LIMIT)
    )


def alias_query(user_id: str, source: str, external_id: str) -> Select[str]:
    """The id of the user's thread that ``source`` calls ``external_id``."""
    return select(ThreadAlias.thread_id).where(
        ThreadAlias.user_id == user_id,
        ThreadAlias.source == source,
        ThreadAlias.external_id == external_id,
    )


def history_in(session: Session, thread_id: str) -> list[Message]:
    """Inside a write job: the thread's newest messages, oldest first."""
    return list(session.execute(history_query(thread_id)).scalars().all())[::-1]


def history_before(session: Session, thread_id: str, before_pk: int) -> list[Message]:
    """Inside a write job: the conversation before the user's message ``before_pk`` — the
    earlier questions, each followed by its answer — newest ``HISTORY_LIMIT``, oldest first.

    A question queued behind a running one is stored before that run's answer, so the
    answers of earlier questions are taken by their run, not by their position, and each
    is put after its own question.
    """
    earlier_runs = select(Message.run_id).where(
        Message.thread_id == thread_id,
        Message.role == "user",
        Message.pk < before_pk,
        Message.run_id.is_not(None),
    )
    answers = and_(Message.role == "assistant", Message.run_id.in_(earlier_runs))
    query = history_query(thread_id).where(or_(Message.pk < before_pk, answers))
    rows = list(session.execute(query).scalars().all())
    asked = {m.run_id: m.pk for m in rows if m.role == "user" and m.run_id is not None}

    def turn(message: Message) -> tuple[int, int, int]:
        question = message.pk
        if message.role != "user" and message.run_id is not None:
            question = asked.get(message.run_id, message.pk)
        return question, message.role != "user", message.pk

    return sorted(rows, key=turn)


def thread_in(session: Session, user_id: str, thread_id: str) -> Thread:
    """Inside a write job: the user's thread, or ``NotFoundError``."""
    thread = session.execute(thread_query(user_id, thread_id)).scalar()
    if thread is None:
        raise NotFoundError("thread not found")
    return thread


def _answer_in(session: Session, user_id: str, message_id: str) -> Message:
    """Inside a write job: the user's answer ``message_id`` (an agent's message in one of
    their threads), or ``NotFoundError``."""
    message = session.execute(
        select(Message).where(Message.id == message_id, Message.user_id == user_id)
    ).scalar()
    if message is None or message.role != "assistant":
        raise NotFoundError("message not found")
    return message


def new_thread(user_id: str, *, title: str | None, meta: dict[str, Any]) -> Thread:
    """A new thread row (not yet added to a session)."""
    now = utcnow()
    return Thread(
        id=new_id("thr"), user_id=user_id, title=title, meta=meta, created_at=now, updated_at=now
    )


class ChatStore:
    """Owner-scoped access to threads, messages and runs."""

    def __init__(self, db: Database, audit: AuditLog) -> None:
        self.db = db
        self._audit = audit

    async def _not_found(self, model: type[Thread] | type[Run], user_id: str, key: str) -> None:
        """Raise ``NotFoundError``; audit it as denied access when the row is someone else's."""
        async with self.db.session() as session:
            owner = (await session.execute(select(model.user_id).where(model.id == key))).scalar()
        if owner is not None and owner != user_id:
            await self._audit.record("access_denied", user_id=user_id, resource=key)
        raise NotFoundError(f"{model.__tablename__[:-1]} not found")

    # -- threads -------------------------------------------------------------

    async def create_thread(
        self, user_id: str, *, title: str | None, meta: dict[str, Any]
    ) -> Thread:
        """Create an empty thread."""
        thread = new_thread(user_id, title=title, meta=meta)

        def create(session: Session) -> Thread:
            insert_rows(session, thread)
            return thread

        return await self.db.write(create)

    async def thread(self, user_id: str, thread_id: str) -> Thread:
        """The user's thread ``thread_id``; ``NotFoundError`` otherwise."""
        async with self.db.session() as session:
            thread = (await session.execute(thread_query(user_id, thread_id))).scalar()
        if thread is None:
            await self._not_found(Thread, user_id, thread_id)
        assert thread is not None
        return thread

    async def update_thread(
        self,
        user_id: str,
        thread_id: str,
        *,
        title: str | None,
        set_title: bool,
        meta: dict[str, Any] | None,
    ) -> Thread:
        """Rename a thread and/or replace its metadata."""

        def update_job(session: Session) -> Thread:
            thread = thread_in(session, user_id, thread_id)
            if set_title:
                thread.title = title
            if meta is not None:
                thread.meta = meta
            thread.updated_at = utcnow()
            return thread

        return await self.db.write(update_job)

    async def list_threads(
        self, user_id: str, *, limit: int, cursor: str | None, search: str | None = None
    ) -> Page[Thread]:
        """The user's threads, most recently active first (a new message, an answer or a
        rename is activity); with ``search``, only those whose title or any message
        contains it (case-insensitive for ASCII letters on SQLite, all letters on PostgreSQL).
        """
        after = decode_activity_cursor(cursor)
        query = select(Thread).where(Thread.user_id == user_id, Thread.deleted_at.is_(None))
        if after is not None:
            at, pk = after
            query = query.where(
                or_(Thread.updated_at < at, and_(Thread.updated_at == at, Thread.pk < pk))
            )
        if search:
            pattern = like_pattern(search)
            in_messages = exists().where(
                Message.thread_id == Thread.id,
                Message.user_id == user_id,
                Message.content.ilike(pattern, escape="\\"),
            )
            query = query.where(or_(Thread.title.ilike(pattern, escape="\\"), in_messages))
        query = query.order_by(Thread.updated_at.desc(), Thread.pk.desc()).limit(limit + 1)
        async with self.db.session() as session:
            rows = list((await session.execute(query)).scalars().all())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, encode_activity_cursor(rows[-1]) if more and rows else None)

    async def runs_of_thread(self, thread_id: str, run_ids: list[str]) -> list[str]:
        """Those of ``run_ids`` that are runs of ``thread_id`` (in the order given)."""
        query = select(Run.id).where(Run.thread_id == thread_id, Run.id.in_(run_ids))
        async with self.db.session() as session:
            found = set((await session.execute(query)).scalars().all())
        return [run_id for run_id in run_ids if run_id in found]

    async def delete_thread(self, user_id: str, thread_id: str) -> None:
        """Delete the thread, its messages, runs and events."""

        def delete_job(session: Session) -> None:
            query = select(Thread).where(Thread.id == thread_id, Thread.user_id == user_id)
            thread = session.execute(query).scalar()  # being deleted already: still found
            if thread is None:
                raise NotFoundError("thread not found")
            run_ids = list(
                session.execute(select(Run.id).where(Run.thread_id == thread.id)).scalars().all()
            )
            if run_ids:
                session.execute(delete(RunEventRow).where(RunEventRow.run_id.in_(run_ids)))
            session.execute(delete(Run).where(Run.thread_id == thread.id))
            session.execute(delete(Feedback).where(Feedback.thread_id == thread.id))
            session.execute(delete(Message).where(Message.thread_id == thread.id))
            session.delete(thread)

        await self.db.write(delete_job)

    # -- messages ------------------------------------------------------------

    async def list_messages(
        self,
        user_id: str,
        thread_id: str,
        *,
        limit: int,
        cursor: str | None,
        newest_first: bool = False,
    ) -> Page[Message]:
        """The thread's messages, oldest first (or newest first, to page back from the end)."""
        key = decode_cursor(cursor)
        await self.thread(user_id, thread_id)
        query = select(Message).where(Message.thread_id == thread_id)
        if key is not None:
            query = query.where(Message.pk < key if newest_first else Message.pk > key)
        order = Message.pk.desc() if newest_first else Message.pk
        query = query.order_by(order).limit(limit + 1)
        async with self.db.session() as session:
            rows = list((await session.execute(query)).scalars().all())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, encode_cursor(rows[-1].pk) if more and rows else None)

    async def all_messages(self, user_id: str, thread_id: str) -> AsyncIterator[list[Message]]:
        """Every message of the user's thread, oldest first, in chunks (for an export)."""
        await self.thread(user_id, thread_id)
        after = 0
        while True:
            query = (
                select(Message)
                .where(Message.thread_id == thread_id, Message.pk > after)
                .order_by(Message.pk)
                .limit(EXPORT_CHUNK)
            )
            async with self.db.session() as session:
                rows = list((await session.execute(query)).scalars().all())
            if not rows:
                return
            yield rows
            after = rows[-1].pk

    # -- feedback ------------------------------------------------------------

    async def feedback_of(self, user_id: str, message_ids: list[str]) -> dict[str, Feedback]:
        """The user's feedback on each of ``message_ids`` that has some."""
        if not message_ids:
            return {}
        query = select(Feedback).where(
            Feedback.user_id == user_id, Feedback.message_id.in_(message_ids)
        )
        async with self.db.session() as session:
            rows = (await session.execute(query)).scalars().all()
        return {row.message_id: row for row in rows}

    async def rate(
        self, user_id: str, message_id: str, *, rating: Rating, comment: str | None
    ) -> Feedback:
        """Set the user's feedback on their thread's answer ``message_id`` (replacing any)."""

        def rate_job(session: Session) -> Feedback:
            message = _answer_in(session, user_id, message_id)
            now = utcnow()
            row = session.execute(
                select(Feedback).where(Feedback.message_id == message.id)
            ).scalar()
            if row is None:
                row = Feedback(
                    message_id=message.id,
                    thread_id=message.thread_id,
                    user_id=user_id,
                    rating=rating,
                    comment=comment,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
            else:
                row.rating, row.comment, row.updated_at = rating, comment, now
            session.flush()
            return row

        try:
            return await self.db.write(rate_job)
        except IntegrityError:  # rated at the same moment elsewhere: now it is an update
            return await self.db.write(rate_job)

    async def feedback(self, user_id: str, message_id: str) -> Feedback:
        """The user's feedback on ``message_id``; ``NotFoundError`` when there is none."""
        found = await self.feedback_of(user_id, [message_id])
        if message_id not in found:
            raise NotFoundError("feedback not found")
        return found[message_id]

    async def unrate(self, user_id: str, message_id: str) -> None:
        """Remove the user's feedback on ``message_id`` (none: ``NotFoundError``)."""

        def unrate_job(session: Session) -> None:
            deleted = session.execute(
                delete(Feedback).where(
                    Feedback.message_id == message_id, Feedback.user_id == user_id
                )
            )
            if not deleted.rowcount:  # type: ignore[attr-defined]
                raise NotFoundError("feedback not found")

        await self.db.write(unrate_job)

    async def list_feedback(
        self, user_id: str, *, limit: int, cursor: str | None
    ) -> Page[Feedback]:
        """The user's feedback, newest first."""
        before = decode_cursor(cursor)
        query = select(Feedback).where(Feedback.user_id == user_id)
        if before is not None:
            query = query.where(Feedback.pk < before)
        query = query.order_by(Feedback.pk.desc()).limit(limit + 1)
        async with self.db.session() as session:
            rows = list((await session.execute(query)).scalars().all())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, encode_cursor(rows[-1].pk) if more and rows else None)

    async def add_assistant_message(
        self, *, message_id: str, thread_id: str, user_id: str, run_id: str, content: str
    ) -> None:
        """Store an agent's answer."""
        now = utcnow()
        message = Message(
            id=message_id,
            thread_id=thread_id,
            user_id=user_id,
            role="assistant",
            content=content,
            run_id=run_id,
            created_at=now,
        )

        def add(session: Session) -> None:
            insert_rows(session, message)
            execute_core(
                session, update(Thread).where(Thread.id == thread_id).values(updated_at=now)
            )

        await self.db.write(add)

    # -- runs ----------------------------------------------------------------

    async def run(self, user_id: str, run_id: str) -> Run:
        """The user's run ``run_id``; ``NotFoundError`` otherwise."""
        async with self.db.session() as session:
            query = select(Run).where(Run.id == run_id, Run.user_id == user_id)
            run = (await session.execute(query)).scalar()
        if run is None:
            await self._not_found(Run, user_id, run_id)
        assert run is not None
        return run

    async def input_message(self, user_id: str, run_id: str) -> Message | None:
        """The user's message that started run ``run_id`` (None if no such run of theirs)."""
        query = select(Message).where(
            Message.run_id == run_id, Message.user_id == user_id, Message.role == "user"
        )
        async with self.db.session() as session:
            return (await session.execute(query.limit(1))).scalar()
