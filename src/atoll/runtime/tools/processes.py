"""``ToolProcessPool``: CPU-bound tools run in worker processes that a timeout can kill.

A tool declared on a plain ``def`` (not ``async def``) is CPU-bound by
definition: it cannot yield to the event loop, so it never runs there (the
built-in ``calculator`` is one). The dispatcher hands it to this pool, which
runs it in one of a few worker processes (started by ``forkserver``, so they
share nothing with the server: no sockets, no database connections). The tool's
timeout and the run's cancellation reach it for real: the worker process is
killed (SIGKILL) and a fresh one takes its place. Each worker may also be capped
in address space (``memory_mb``), so a tool cannot exhaust the machine's memory,
and runs at a lower CPU priority (``niceness``), so that the server's event loop
— every other user's requests and streams — is scheduled before a busy tool.

Warm, not cold: a worker imports the tools' modules (``preload``) *before* it
says it is ready, and the dispatcher starts a tool's timeout only once it holds a
ready worker — so a plugin with a slow import cannot time out on its own import,
and a timeout (which kills the worker) does not make the next call cold: the
pool starts a replacement at once, and keeps ``warm`` workers started ahead of
need. Starting and waiting for a worker have their own bounds, and a worker that
cannot start says why (the import error), not "timed out".

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
from collections.abc import AsyncIterator, Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from atoll.errors import AtollError, ToolError, ToolTimeoutError

logger = logging.getLogger(__name__)

_OK, _FAILED, _CRASHED, _READY, _NOT_STARTED = "ok", "failed", "crashed", "ready", "not_started"
START_TIMEOUT = 60.0
"""Seconds a worker may take to start and import its modules."""
WAIT_TIMEOUT = 60.0
"""Seconds a call may wait for a free worker (its turn among the users), beside its timeout."""


def _resolve(module_name: str, qualname: str) -> Callable[..., Any]:
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    fn = getattr(target, "fn", target)  # the module attribute is the Tool; run its function
    if not callable(fn):
        raise TypeError(f"{module_name}.{qualname} is not callable")
    return fn  # type: ignore[no-any-return]


def _start(memory_mb: int | None, niceness: int, preload: Sequence[str]) -> str | None:
    """Set the worker's limits and import its modules; why it cannot start, if it cannot."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    if niceness:
        os.nice(niceness)  # the event loops of the server come first
    if memory_mb is not None:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for name in preload:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            return f"importing {name} failed: {type(exc).__name__}: {exc}"
    return None


def _serve(
    connection: Connection, memory_mb: int | None, niceness: int, preload: Sequence[str]
) -> None:
    """The worker process: start, say so, then run one call at a time until the pipe closes."""
    failure = _start(memory_mb, niceness, preload)
    try:
        connection.send((_READY,) if failure is None else (_NOT_STARTED, failure))
    except OSError:
        return  # the pool closed while this process started: nobody to serve
    if failure is not None:
        return
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


async def _receive(connection: Connection) -> Any:
    """The next message on ``connection``, waited for without blocking the event loop."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()
    descriptor = connection.fileno()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(descriptor, ready)
    try:
        await readable
    finally:
        loop.remove_reader(descriptor)
    return connection.recv()


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context: Any, memory_mb: int | None, niceness: int, preload: Sequence[str]):
        parent, self._child = context.Pipe()
        self.process = context.Process(
            target=_serve,
            args=(self._child, memory_mb, niceness, tuple(preload)),
            daemon=True,
            name="atoll-tool-worker",
        )
        self.connection: Connection = parent
        self.alive = True

    async def start(self, within: float) -> None:
        """Start the process (off the event loop) and wait until it has imported its modules."""
        launching = asyncio.ensure_future(asyncio.to_thread(self.process.start))
        try:
            # Cancelled meanwhile (a shutdown): the launch finishes first, so kill() finds
            # the process it must stop rather than one that appears after it looked.
            await asyncio.shield(launching)
        except BaseException:
            with contextlib.suppress(BaseException):
                await launching
            self.kill()
            raise
        self._child.close()
        try:
            async with asyncio.timeout(within):
                reply = await _receive(self.connection)
        except TimeoutError:
            self.kill()
            raise ToolError(f"the tool process did not start within {within:g}s") from None
        except (EOFError, OSError):
            self.kill()
            raise ToolError("the tool process exited while starting") from None
        except BaseException:
            self.kill()
            raise
        if reply[0] != _READY:
            self.kill()
            raise ToolError(f"the tool process could not start: {reply[1]}")

    async def call(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """Run ``fn(**kwargs)`` in the process; cancelling the caller kills the process."""
        try:
            self.connection.send((fn.__module__, fn.__qualname__, kwargs))
            reply = await _receive(self.connection)
        except asyncio.CancelledError:
            self.kill()
            raise
        except (EOFError, OSError):
            self.kill()
            raise ToolError(f"{fn.__name__} stopped unexpectedly (its process died)") from None
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
        with contextlib.suppress(OSError):
            self._child.close()
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
        preload: Sequence[str] = (),
        warm: int = 0,
        start_timeout: float = START_TIMEOUT,
        wait_timeout: float = WAIT_TIMEOUT,
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self.per_user = per_user if per_user is not None else max(1, size // 2)
        self.warm = min(max(warm, 0), size)
        self.preload = tuple(dict.fromkeys(preload))
        self.start_timeout = start_timeout
        self.wait_timeout = wait_timeout
        self._memory_mb = memory_mb
        self._niceness = niceness
        self._context = multiprocessing.get_context(start_method)
        self._idle: list[_Worker] = []
        self._workers = 0
        """Workers alive or starting (idle, busy or on their way)."""
        self._in_use: dict[str, int] = {}
        self._waiting: OrderedDict[str, deque[asyncio.Future[_Worker | None]]] = OrderedDict()
        self._starting: set[asyncio.Task[None]] = set()
        self._closed = False
        self.killed = 0
        """How many workers were killed (overran their timeout, cancelled or crashed)."""
        self.start_failure: str | None = None
        """Why the last background start failed, if it did."""

    def pids(self) -> list[int]:
        """Process ids of the idle workers (tests and metrics)."""
        return [w.process.pid for w in self._idle if w.process.pid is not None]

    @property
    def ready(self) -> int:
        """How many started workers are idle."""
        return len(self._idle)

    # -- warm workers ------------------------------------------------------------------

    def start(self) -> None:
        """Start ``warm`` workers in the background (a process's start-up calls this)."""
        self._replenish()

    def _replenish(self) -> None:
        while not self._closed and self._workers < self.warm:
            self._workers += 1
            task = asyncio.get_running_loop().create_task(self._start_spare())
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start_spare(self) -> None:
        worker = self._new_worker()
        try:
            await worker.start(self.start_timeout)
        except asyncio.CancelledError:
            self._workers -= 1
            raise
        except Exception as exc:
            self._workers -= 1
            self.start_failure = str(exc)
            logger.error("a tool process could not start: %s", exc)
            self._hand_over()  # a waiting call starts one itself, and is told why it fails
            return
        self.start_failure = None
        if self._closed:
            self._workers -= 1
            worker.kill()
            return
        self._idle.append(worker)
        self._hand_over()

    def _new_worker(self) -> _Worker:
        return _Worker(self._context, self._memory_mb, self._niceness, self.preload)

    # -- calls ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def worker(self, user_id: str) -> AsyncIterator[_Worker]:
        """A ready worker for one of ``user_id``'s calls, after the user's turn.

        The wait (the user's turn, a worker's start) is bounded by ``wait_timeout``
        and ``start_timeout``, separately from the call: the caller times the call.
        """
        try:
            async with asyncio.timeout(self.wait_timeout):
                granted = await self._acquire(user_id)
        except TimeoutError:
            raise ToolTimeoutError(
                f"no tool process was free within {self.wait_timeout:g}s (the server is busy)"
            ) from None
        try:
            worker = granted if granted is not None else await self._start_for(user_id)
        except BaseException:
            self._give_back(user_id)
            raise
        try:
            yield worker
        finally:
            self._release(user_id, worker)

    async def call(self, fn: Callable[..., Any], kwargs: dict[str, Any], *, user_id: str) -> Any:
        """Run ``fn(**kwargs)`` in a worker, after the user's turn; cancel to kill it."""
        async with self.worker(user_id) as worker:
            return await worker.call(fn, kwargs)

    async def _start_for(self, user_id: str) -> _Worker:
        worker = self._new_worker()
        try:
            await worker.start(self.start_timeout)
        except BaseException:
            self._workers -= 1
            raise
        return worker

    def _can_start(self, user_id: str) -> bool:
        free = bool(self._idle) or self._workers < self.size
        return free and self._in_use.get(user_id, 0) < self.per_user

    async def _acquire(self, user_id: str) -> _Worker | None:
        """An idle worker, or ``None``: a new one may be started (its place is reserved)."""
        if self._closed:
            raise ToolError("the tool process pool is closed")
        if not self._waiting and self._can_start(user_id):
            return self._take(user_id)
        waiter: asyncio.Future[_Worker | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user_id, deque()).append(waiter)
        self._hand_over()  # others may wait only for their own share: then this one starts
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                granted = waiter.result()  # handed over as we were cancelled
                if granted is None:
                    self._give_back(user_id)
                else:
                    self._release(user_id, granted)
            else:
                queue = self._waiting.get(user_id)
                if queue is not None and waiter in queue:
                    queue.remove(waiter)
                    if not queue:
                        del self._waiting[user_id]
            raise

    def _take(self, user_id: str) -> _Worker | None:
        self._in_use[user_id] = self._in_use.get(user_id, 0) + 1
        if self._idle:
            return self._idle.pop()
        self._workers += 1
        return None

    def _give_back(self, user_id: str) -> None:
        """A reserved place whose worker never started (its count is already returned)."""
        self._uncount(user_id)
        self._hand_over()

    def _uncount(self, user_id: str) -> None:
        left = self._in_use.get(user_id, 0) - 1
        if left > 0:
            self._in_use[user_id] = left
        else:
            self._in_use.pop(user_id, None)

    def _release(self, user_id: str, worker: _Worker) -> None:
        self._uncount(user_id)
        if worker.alive and not self._closed:
            self._idle.append(worker)
        else:
            self._workers -= 1
            if not worker.alive:
                self.killed += 1
            else:
                worker.kill()
            self._replenish()  # a killed worker's replacement starts now, not on the next call
        self._hand_over()

    def _hand_over(self) -> None:
        """Give free capacity to waiting users in turn (round robin)."""
        granted = True
        while granted and self._waiting:
            granted = False
            for user_id in list(self._waiting):
                if not self._idle and self._workers >= self.size:
                    return  # no capacity left: nobody else can start (no scan of every user)
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
        """Stop every idle and starting worker (busy ones are stopped when their call ends)."""
        self._closed = True
        for task in list(self._starting):
            task.cancel()
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)
        idle, self._idle = self._idle, []
        for worker in idle:
            self._workers -= 1
            await asyncio.to_thread(worker.kill)
