"""How Atoll reaches an MCP server: stdio and streamable HTTP, bounded while they read.

The SDK's transports read a message whole before anything looks at its size: a stdio
server's line grows in memory until its newline comes, an HTTP server's JSON answer
until it ends (its SSE events stop at a fixed 1 MiB). Here every message is counted
*as its bytes arrive* and refused the moment it passes ``limit`` (``Settings.
mcp_max_result_bytes``), so memory never grows with what a server sends; the session
ends (a stdio server's process with it) and the call gets a ``ToolError`` saying so.

A stdio server that exits — at start or mid-call — is named with its exit status and
the end of its standard error, which is otherwise passed through to ours (the
operator's log), as the SDK does.

What went wrong is put in the session's ``TransportReport`` before the transport
raises: the SDK may wrap the exception in a task group's ``ExceptionGroup`` or turn
it into a JSON-RPC error, and the caller reports the transport's own words instead.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import anyio
import httpx2
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.memory import MemoryObjectSendStream
from mcp.client._transport import TransportStreams
from mcp.client.stdio import get_default_environment
from mcp.os.posix.utilities import terminate_posix_process_tree
from mcp.shared.message import SessionMessage
from mcp_types import jsonrpc_message_adapter

from atoll.errors import ToolError

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 2.0
"""Seconds a stdio server has to exit once its stdin is closed (then its group is killed)."""
STDERR_TAIL = 2000
"""Characters of a stdio server's standard error kept to explain its exit."""
READ_SIZE = 64 * 1024


class TransportReport:
    """What a transport found wrong with its server, in its own words (the first fault),
    and the end of a stdio server's standard error when it exited (for the operator)."""

    def __init__(self) -> None:
        self.fault: ToolError | None = None
        self.stderr = ""

    def report(self, fault: ToolError) -> ToolError:
        """Keep ``fault`` (unless one is already kept) and return it, to be raised."""
        if self.fault is None:
            self.fault = fault
        return fault


def too_large(server: str, limit: int) -> ToolError:
    """The fault of a server that sent a message over ``limit`` bytes."""
    return ToolError(
        f"the MCP server {server!r} sent a message larger than {limit} bytes "
        "(ATOLL_MCP_MAX_RESULT_BYTES); it was not read"
    )


class StderrTail:
    """A stdio server's standard error: passed through to ours, its end kept."""

    def __init__(self) -> None:
        self._chunks: deque[str] = deque()
        self._size = 0

    async def pump(self, stream: ByteReceiveStream) -> None:
        """Read ``stream`` to its end."""
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, OSError):
            while True:
                text = (await stream.receive(READ_SIZE)).decode("utf-8", "replace")
                sys.stderr.write(text)
                self._chunks.append(text)
                self._size += len(text)
                while self._size - len(self._chunks[0]) >= STDERR_TAIL:
                    self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        """The last ``STDERR_TAIL`` characters, stripped."""
        return "".join(self._chunks)[-STDERR_TAIL:].strip()


def exited(server: str, process: Process, stderr: StderrTail, report: TransportReport) -> ToolError:
    """The fault of a stdio server whose output ended: its exit status (to the model and
    the user), and its stderr in the log and the report (to the operator)."""
    status = process.returncode
    how = f"exited with status {status}" if status is not None else "closed its output"
    report.stderr = stderr.text()
    logger.warning("MCP server %s %s; its stderr ends: %s", server, how, report.stderr or "-")
    return report.report(ToolError(f"the MCP server {server!r} {how}"))


async def _read_messages(
    stdout: ByteReceiveStream,
    sink: MemoryObjectSendStream[SessionMessage | Exception],
    *,
    server: str,
    limit: int,
    report: TransportReport,
) -> None:
    """Newline-delimited JSON-RPC messages from ``stdout`` into ``sink``; a line that grows
    past ``limit`` bytes is a fault at once, however much of it is still to come."""
    buffer = bytearray()
    while True:
        try:
            buffer += await stdout.receive(READ_SIZE)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return
        start = 0
        while (newline := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:newline])
            start = newline + 1
            if len(line) > limit:
                raise report.report(too_large(server, limit))
            if line.strip():
                try:
                    await sink.send(_parsed(line))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return  # the session is gone
        del buffer[:start]
        if len(buffer) > limit:
            raise report.report(too_large(server, limit))


def _parsed(line: bytes) -> SessionMessage | Exception:
    """One message, or the parse error as a value (the session reports it), as the SDK."""
    try:
        return SessionMessage(jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        return exc


async def _exit_of(process: Process, within: float) -> None:
    """Wait at most ``within`` seconds for ``process`` to exit. Not ``process.wait()``:
    it also waits for the pipes, which a child of the server may hold open."""
    with anyio.move_on_after(within):
        while process.returncode is None:  # noqa: ASYNC110 - nothing to wait on but polling
            await anyio.sleep(0.01)


async def _stop(process: Process) -> None:
    """Close stdin, give the server ``STOP_TIMEOUT`` to exit, then kill its process group;
    then release the pipes and the process (bounded: a survivor is abandoned)."""
    with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        if process.stdin is not None:
            await process.stdin.aclose()
    await _exit_of(process, STOP_TIMEOUT)
    if process.returncode is None:
        await terminate_posix_process_tree(process, STOP_TIMEOUT)
    with anyio.move_on_after(STOP_TIMEOUT), contextlib.suppress(OSError):
        await process.aclose()


@contextlib.asynccontextmanager
async def bounded_stdio(
    server: str,
    *,
    command: str,
    args: tuple[str, ...],
    env: Mapping[str, str] | None,
    cwd: Path | None,
    limit: int,
    report: TransportReport,
) -> AsyncIterator[TransportStreams]:
    """The SDK's stdio transport, with each message bounded as it is read and the
    server's exit named (status, stderr) when its output ends before ours."""
    process = await anyio.open_process(
        [command, *args],
        env=get_default_environment() | dict(env or {}),
        cwd=cwd,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: killed whole
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    stdin, stdout = process.stdin, process.stdout
    read_sink, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_source = anyio.create_memory_object_stream[SessionMessage](0)
    stderr = StderrTail()
    stderr_done = anyio.Event()
    closing = anyio.Event()

    async def read() -> None:
        async with read_sink:
            await _read_messages(stdout, read_sink, server=server, limit=limit, report=report)
            if closing.is_set():
                return
            with anyio.move_on_after(STOP_TIMEOUT):  # its status and last words, if it exits
                await _exit_of(process, STOP_TIMEOUT)
                await stderr_done.wait()
            raise exited(server, process, stderr, report)

    async def write() -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            async with write_source:
                async for message in write_source:
                    text = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await stdin.send(text.encode() + b"\n")

    async def pump_stderr(stream: ByteReceiveStream) -> None:
        try:
            await stderr.pump(stream)
        finally:
            stderr_done.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(read)
        tasks.start_soon(write)
        tasks.start_soon(pump_stderr, process.stderr)
        try:
            yield read_stream, write_stream
        finally:
            closing.set()
            with anyio.CancelScope(shield=True):
                await write_stream.aclose()
                await read_stream.aclose()
                await _stop(process)
            tasks.cancel_scope.cancel()


class BoundedStream(httpx2.AsyncByteStream):
    """A response body counted as it arrives: a JSON answer as one message, an SSE
    stream event by event (a blank line ends an event)."""

    def __init__(
        self, inner: httpx2.AsyncByteStream, *, events: bool, fault: ToolError, limit: int,
        report: TransportReport,
    ) -> None:  # fmt: skip
        self._inner = inner
        self._events = events
        self._fault = fault
        self._limit = limit
        self._report = report

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pending = 0
        tail = b""
        async for chunk in self._inner:
            if self._events:
                window = tail + chunk
                end = max(window.rfind(b"\n\n") + 2, window.rfind(b"\r\n\r\n") + 4)
                pending = len(window) - end if end > 3 else pending + len(chunk)
                tail = window[-3:]
            else:
                pending += len(chunk)
            if pending > self._limit:
                raise self._report.report(self._fault)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def bounded_answers(
    server: str, *, limit: int, report: TransportReport
) -> Callable[[httpx2.Response], Awaitable[None]]:
    """A response hook (it runs before the body is read) that bounds every answer of an
    MCP server (``BoundedStream``) and refuses compressed ones (their decoded size could
    not be bounded: the client asks for ``identity``)."""

    async def bound(response: httpx2.Response) -> None:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise report.report(
                ToolError(f"the MCP server {server!r} compressed its answer ({encoding})")
            )
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        events = response.headers.get("content-type", "").lower().startswith("text/event-stream")
        response.stream = BoundedStream(
            response.stream, events=events, fault=too_large(server, limit), limit=limit,
            report=report,
        )  # fmt: skip

    return bound


@contextlib.asynccontextmanager
async def bounded_http(
    server: str,
    *,
    url: str,
    headers: Mapping[str, str] | None,
    http_timeout: float | None,
    limit: int,
    report: TransportReport,
) -> AsyncIterator[TransportStreams]:
    """The SDK's streamable-HTTP transport over a client whose answers are bounded."""
    from mcp.client.streamable_http import streamable_http_client

    client_headers = {**dict(headers or {}), "Accept-Encoding": "identity"}
    hooks = {"response": [bounded_answers(server, limit=limit, report=report)]}
    async with (
        httpx2.AsyncClient(headers=client_headers, timeout=http_timeout, event_hooks=hooks) as http,
        streamable_http_client(url, http_client=http, max_sse_event_size=limit) as streams,
    ):
        yield streams
