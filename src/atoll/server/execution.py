"""Executing one stored run: shared by the in-process server and ``atoll worker``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from atoll.runtime.context import UserExecutionContext
from atoll.runtime.engine import RunOutcome, RunRequest
from atoll.runtime.factory import ExecutionEngineFactory
from atoll.runtime.llm.base import ChatMessage
from atoll.runtime.state import ExecutionState
from atoll.store.chat import ChatStore
from atoll.store.models import Message


def chat_history(rows: Sequence[Message]) -> list[ChatMessage]:
    """The thread's earlier messages as the model sees them."""
    return [
        ChatMessage("user" if m.role == "user" else "assistant", m.content)
        for m in rows
        if m.role in ("user", "assistant")
    ]


async def execute_run(
    factory: ExecutionEngineFactory,
    chat: ChatStore,
    context: UserExecutionContext,
    *,
    agent: str,
    message: Message,
    history: Sequence[Message],
    cancel_reason: Callable[[], str | None],
    worker_id: str | None = None,
) -> RunOutcome:
    """Run ``message`` through ``agent`` in a fresh engine and record how the run ended.

    ``cancel_reason`` is asked once the engine exists, for a cancel that arrived
    while the run was being set up. A worker passes its ``worker_id`` so the end
    is only recorded while it still holds the run.
    """
    async with factory.user_execution_scope(context) as engine:
        reason = cancel_reason()
        if reason is not None:
            engine.cancel(reason)
        request = RunRequest(agent, message.content, message.id, chat_history(history))
        outcome = await engine.run(request)
    record = factory.tracker.find(context.run_id)
    await chat.finish_run(
        context.run_id,
        state=outcome.state.value,
        error=dict(outcome.error) if outcome.error else None,
        started_at=record.started_wall if record is not None else None,
        finished_at=datetime.now(UTC),
        answer_message_id=outcome.message_id if outcome.state is ExecutionState.COMPLETED else None,
        worker_id=worker_id,
    )
    return outcome
