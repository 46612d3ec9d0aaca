"""``ToolProcessPool``: CPU-bound tools run in worker processes that a timeout can kill.

A tool declared on a plain ``def`` (not ``async def``) is CPU-bound by
definition: it cannot yield to the event loop, so it never runs there. The
dispatcher hands it to this pool, which runs it in one of a few worker
processes (started by ``forkserver``, so they share nothing with the server:
no sockets, no database connections). The tool's timeout and the run's
cancellation reach it for real: the worker process is killed (SIGKILL) and a
fresh one takes its place on the next call. Each worker may also be capped in
address space (``memory_mb``), so a tool cannot exhaust the machine's memory,
and runs at a lower CPU priority (``niceness``), so that the server's event loop
— every other user's requests and streams — is scheduled before a busy tool.

Fair share: at most ``per_user`` workers run one user's calls at once, and a
freed worker goes to the users waiting in turn (round robin), so one user's
runs cannot hold the pool while others wait.

The worker finds the function by its module and qualified name, so a process
tool must be defined at module level in an importable module (every plugin is).
Its arguments and result are pickled; it does not receive a ``ToolContext``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import multiprocessing
import os
import signal
from collections import OrderedDict, deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from atoll.errors import AtollError, ToolError

logger = logging.getLogger(__name__)

_OK, _FAILED, _CRASHED = "ok", "failed", "crashed"


def _resolve(module_name: str, qualname: str) -> Callable[..., Any]:
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    fn = getattr(target, "fn", target)  # the module attribute is the Tool; run its function
    if not callable(fn):
        raise TypeError(f"{module_name}.{qualname} is not callable")
    return fn  # type: ignore[no-any-return]


def _serve(connection: Connection, memory_mb: int | None, niceness: int) -> None:
    """The worker process: run one call at a time until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    if niceness:
        os.nice(niceness)  # the event loops of the server come first
    if memory_mb is not None:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    functions: dict[tuple[str, str], Callable[..., Any]] = {}
    while True:
        try:
            module_name, qualname, kwargs = connection.recv()
        except (EOFError, OSError):
            return
        try:
            key = (module_name, qualname)
            if key not in functions:
                functions[key] = _resolve(module_name, qualname)
            reply: tuple[Any, ...] = (_OK, functions[key](**kwargs))
        except AtollError as exc:
            reply = (_FAILED, exc.code, exc.message)
        except MemoryError:
            reply = (_FAILED, ToolError.code, "the tool ran out of memory")
        except Exception as exc:
            reply = (_CRASHED, type(exc).__name__)
        try:
            connection.send(reply)
        except Exception as exc:  # the result cannot be pickled
            connection.send((_CRASHED, f"unpicklable result ({type(exc).__name__})"))


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context: Any, memory_mb: int | None, niceness: int) -> None:
        parent, child = context.Pipe()
        self.process = context.Process(
            target=_serve,
            args=(child, memory_mb, niceness),
            daemon=True,
            name="atoll-tool-worker",
        )
        self.process.start()
        child.close()
        self.connection: Connection = parent
        self.alive = True

    async def call(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """Run ``fn(**kwargs)`` in the process; cancelling the caller kills the process."""
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        descriptor = self.connection.fileno()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(descriptor, ready)
        try:
            self.connection.send((fn.__module__, fn.__qualname__, kwargs))
            await readable
            reply = self.connection.recv()
        except asyncio.CancelledError:
            self.kill()
            raise
        except (EOFError, OSError):
            self.kill()
            raise ToolError(f"{fn.__name__} stopped unexpectedly (its process died)") from None
        finally:
            loop.remove_reader(descriptor)
        if reply[0] == _OK:
            return reply[1]
        if reply[0] == _FAILED:
            error = ToolError(reply[2])
            error.code = reply[1]  # type: ignore[misc]
            raise error
        raise ToolError(f"{fn.__name__} failed ({reply[1]})")

    def kill(self) -> None:
        """Stop the process at once (a tool that overran cannot be interrupted otherwise)."""
        self.alive = False
        with contextlib.suppress(OSError):
            self.connection.close()
        if self.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(timeout=5)


class ToolProcessPool:
    """Up to ``size`` worker processes for CPU-bound tools, shared fairly among users."""

    def __init__(
        self,
        size: int,
        *,
        per_user: int | None = None,
        memory_mb: int | None = 1024,
        niceness: int = 10,
        start_method: str = "forkserver",
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self.per_user = per_user if per_user is not None else max(1, size // 2)
        self._memory_mb = memory_mb
        self._niceness = niceness
        self._context = multiprocessing.get_context(start_method)
        self._idle: list[_Worker] = []
        self._workers = 0
        self._in_use: dict[str, int] = {}
        self._waiting: OrderedDict[str, deque[asyncio.Future[_Worker]]] = OrderedDict()
        self._closed = False
        self.killed = 0
        """How many workers were killed (overran their timeout, cancelled or crashed)."""

    def pids(self) -> list[int]:
        """Process ids of the idle workers (tests and metrics)."""
        return [w.process.pid for w in self._idle if w.process.pid is not None]

    async def call(self, fn: Callable[..., Any], kwargs: dict[str, Any], *, user_id: str) -> Any:
        """Run ``fn(**kwargs)`` in a worker, after the user's turn; cancel to kill it."""
        worker = await self._acquire(user_id)
        try:
            return await worker.call(fn, kwargs)
        finally:
            self._release(user_id, worker)

    def _can_start(self, user_id: str) -> bool:
        free = bool(self._idle) or self._workers < self.size
        return free and self._in_use.get(user_id, 0) < self.per_user

    async def _acquire(self, user_id: str) -> _Worker:
        if self._closed:
            raise ToolError("the tool process pool is closed")
        if not self._waiting and self._can_start(user_id):
            return self._take(user_id)
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user_id, deque()).append(waiter)
        self._hand_over()  # others may wait only for their own share: then this one starts
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(user_id, waiter.result())  # handed over as we were cancelled
            else:
                queue = self._waiting.get(user_id)
                if queue is not None and waiter in queue:
                    queue.remove(waiter)
                    if not queue:
                        del self._waiting[user_id]
            raise

    def _take(self, user_id: str) -> _Worker:
        self._in_use[user_id] = self._in_use.get(user_id, 0) + 1
        if self._idle:
            return self._idle.pop()
        self._workers += 1
        try:
            return _Worker(self._context, self._memory_mb, self._niceness)
        except BaseException:
            self._workers -= 1
            self._in_use[user_id] -= 1
            raise

    def _release(self, user_id: str, worker: _Worker) -> None:
        left = self._in_use.get(user_id, 0) - 1
        if left > 0:
            self._in_use[user_id] = left
        else:
            self._in_use.pop(user_id, None)
        if worker.alive and not self._closed:
            self._idle.append(worker)
        else:
            self._workers -= 1
            if not worker.alive:
                self.killed += 1
            else:
                worker.kill()
        self._hand_over()

    def _hand_over(self) -> None:
        """Give free capacity to waiting users in turn (round robin)."""
        granted = True
        while granted and self._waiting:
            granted = False
            for user_id in list(self._waiting):
                queue = self._waiting[user_id]
                while queue and queue[0].done():
                    queue.popleft()
                if queue and self._can_start(user_id):
                    queue.popleft().set_result(self._take(user_id))
                    granted = True
                if not queue:
                    del self._waiting[user_id]
                else:
                    self._waiting.move_to_end(user_id)  # the next free worker: someone else's

    async def aclose(self) -> None:
        """Stop every idle worker (busy ones are stopped when their call ends)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for worker in idle:
            self._workers -= 1
            await asyncio.to_thread(worker.kill)
