"""Thread and message changes pushed to the user's own sockets (their other tabs follow).

Frames (see docs/protocol.md): ``thread_created`` and ``thread_updated`` carry the
thread, ``thread_deleted`` its id, ``message_created`` the user's message and its
thread. They are best effort and not logged: a socket that was not open, or a
notice lost while Redis was down, is caught up by the client re-reading the list
when it reconnects.
"""

from __future__ import annotations

import logging
from typing import Any

from atoll.bus.memory import InMemoryEventBus, Notice
from atoll.bus.redis import RedisEventBus
from atoll.server.cluster import REDIS_ERRORS
from atoll.server.schemas import message_out, thread_out
from atoll.store.models import Message, Thread

logger = logging.getLogger(__name__)


class UserNotices:
    """Sends notices to every socket of one user, on this node or (scaled out) any node."""

    def __init__(self, local: InMemoryEventBus, remote: RedisEventBus | None = None) -> None:
        self._local = local
        self._remote = remote

    async def send(self, user_id: str, frame: dict[str, Any]) -> None:
        """Deliver ``frame`` to ``user_id``'s sockets; never raises for a delivery problem."""
        notice = Notice(user_id, frame)
        if self._remote is None:
            self._local.notify(notice)
            return
        try:
            await self._remote.notify(notice)
        except REDIS_ERRORS as exc:
            logger.warning("notice %s not sent: redis is unreachable (%s)", frame["type"], exc)

    async def thread(self, kind: str, thread: Thread) -> None:
        """``thread_created`` or ``thread_updated``."""
        frame = {"type": kind, "thread": thread_out(thread).model_dump(mode="json")}
        await self.send(thread.user_id, frame)

    async def thread_deleted(self, user_id: str, thread_id: str) -> None:
        await self.send(user_id, {"type": "thread_deleted", "thread_id": thread_id})

    async def message(self, message: Message, thread: Thread) -> None:
        """``message_created``: a user's message, with its thread (now most recently active)
        and the ``client_id`` it was sent with (so the tab that sent it knows it)."""
        frame = {
            "type": "message_created",
            "client_id": message.client_id,
            "message": message_out(message).model_dump(mode="json"),
            "thread": thread_out(thread).model_dump(mode="json"),
        }
        await self.send(message.user_id, frame)
