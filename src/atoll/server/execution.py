"""Executing one stored run: shared by the in-process server and ``atoll worker``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from atoll.aio import retry_until
from atoll.errors import RunLimitError, UnavailableError
from atoll.runtime.context import UserExecutionContext
from atoll.runtime.endings import Ending
from atoll.runtime.engine import RunOutcome, RunRequest
from atoll.runtime.events import RunEventBus
from atoll.runtime.factory import ExecutionEngineFactory
from atoll.runtime.llm.base import ChatMessage
from atoll.runtime.state import ExecutionState
from atoll.store.models import Message
from atoll.store.runs import NextRun, RunStore

logger = logging.getLogger(__name__)

Dispatch = Callable[[NextRun], Awaitable[None]]
"""``dispatch(run)``: hand a stored PENDING run to whatever executes runs (this process's
consumer, or the Redis run queue). Its claim is conditional, so dispatching twice is harmless."""


async def hand_over(dispatch: Dispatch, next_runs: Sequence[NextRun]) -> None:
    """Dispatch the runs whose turn came now that a run of their user ended (no waiting run
    polls: the run it waits for wakes it). A failure is logged: the stall sweep of a single
    process, or the queue timeout scaled out, still starts or ends it."""
    for next_run in next_runs:
        try:
            await dispatch(next_run)
        except Exception:
            logger.warning("dispatching run %s after the run before it failed", next_run.run_id)


def chat_history(rows: Sequence[Message]) -> list[ChatMessage]:
    """The thread's earlier messages as the model sees them."""
    return [
        ChatMessage("user" if m.role == "user" else "assistant", m.content)
        for m in rows
        if m.role in ("user", "assistant")
    ]


async def execute_run(
    factory: ExecutionEngineFactory,
    store: RunStore,
    context: UserExecutionContext,
    *,
    agent: str,
    message: Message,
    history: Sequence[Message],
    cancel_reason: Callable[[], str | None],
    dispatch: Dispatch,
    worker_id: str | None = None,
) -> RunOutcome | None:
    """Run ``message`` through ``agent`` in a fresh engine and record how the run ended.

    ``cancel_reason`` is asked once the engine exists, for a cancel that arrived
    while the run was being set up. A worker passes its ``worker_id`` so the end
    is only recorded while it still holds the run. A run refused by the user's
    concurrency limit (``reject``) ends FAILED with an ``agent_error`` ``run_limit``
    and returns None.
    """
    async with factory.user_execution_scope(context) as engine:
        reason = cancel_reason()
        if reason is not None:
            engine.cancel(reason)
        request = RunRequest(agent, message.content, message.id, chat_history(history))
        try:
            outcome = await engine.run(request)
        except RunLimitError as exc:  # ATOLL_RUN_OVERFLOW=reject: the run ends before it began
            ending = Ending.failure(ExecutionState.FAILED, exc.code, exc.message)
            await end_outside(
                store,
                factory.recorder.bus,
                context.run_id,
                ending,
                dispatch=dispatch,
                held_by=worker_id,
            )
            return None
    if not engine.ended_in_log:
        # Its terminal event was not logged: ended elsewhere meanwhile (then this finds it
        # ended and does nothing), or the database failed. End it once the database answers.
        await end_unrecorded(store, factory.recorder.bus, context.run_id, dispatch, worker_id)
        return outcome
    await hand_over(dispatch, await store.next_after(context.run_id))
    return outcome


UNRECORDED = Ending.failure(
    ExecutionState.FAILED,
    UnavailableError.code,
    "the end of this run could not be recorded (the database did not answer)",
)
END_RETRY_SECONDS = 600.0
"""How long a process keeps trying to record the end of a run whose terminal event failed."""


async def end_unrecorded(
    store: RunStore, bus: RunEventBus, run_id: str, dispatch: Dispatch, worker_id: str | None
) -> None:
    """End a run whose engine could not log its terminal event, retrying while the database
    is unavailable; the run ends ``failed`` (``unavailable``) unless something else ended it."""

    async def end() -> bool:
        return await end_outside(
            store, bus, run_id, UNRECORDED, dispatch=dispatch, held_by=worker_id
        )

    try:
        if await retry_until(end, within=END_RETRY_SECONDS, what=f"ending run {run_id}"):
            logger.warning("run %s: its terminal event could not be logged; ended", run_id)
    except Exception:
        logger.error("run %s: its end could not be recorded; recovery will end it", run_id)


async def end_outside(
    store: RunStore,
    bus: RunEventBus,
    run_id: str,
    ending: Ending,
    *,
    dispatch: Dispatch,
    held_by: str | None = None,
    queued_only: bool = False,
) -> bool:
    """End a run no engine is executing, publish its terminal event, and dispatch the
    thread's next run.

    The end and its event are one transaction (``RunStore.end``); False when
    the run was not alive (or not queued, or not held by ``held_by``). A failed
    publish is only logged: the event is in the log, and readers catch up from it.
    """
    ended = await store.end(run_id, ending, held_by=held_by, queued_only=queued_only)
    if ended is None:
        return False
    if ended.event is not None:
        try:
            await bus.publish(ended.event)
        except Exception:
            logger.warning("publishing the end of run %s failed (readers use the log)", run_id)
    await hand_over(dispatch, ended.next_runs)
    return True
