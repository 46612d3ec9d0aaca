"""``atoll chat``: the terminal client.

The input line stays at the bottom (prompt_toolkit) while the run prints above it
(rich): thinking, each tool call as a panel, and the answer rendered as Markdown,
word-wrapped, one finished block at a time, with a live preview of the block being
written in the status bar. Commands are read while a run streams: ``/cancel`` (or
Ctrl+C) stops it at once; a message typed meanwhile is sent when the run ends
(stopped or not: typed text is never dropped).
A dropped connection is reconnected with backoff and the run resumed from the last
``seq`` seen. Commands: ``/new``, ``/threads`` (``/threads more`` pages on),
``/switch N`` (shows the thread's latest messages), ``/cancel``, ``/help``, ``/quit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.panel import Panel

from atoll.client import ApiError, AtollClient, AtollSocket

HELP = (
    "/new  /threads [more]  /switch N  /cancel  /help  /quit   "
    "(Enter sends; Ctrl+C stops a run; Ctrl+D quits)"
)
THREADS_PAGE = 20
HISTORY_SHOWN = 10
PASSWORD_TRIES = 3
NETWORK_ERRORS = (OSError, httpx.TransportError, websockets.WebSocketException)


def friendly(error: BaseException, url: str) -> str:
    """What went wrong, in words (no traceback)."""
    if isinstance(error, ApiError):
        return str(error.problem.get("detail") or error.code)
    if isinstance(error, httpx.TimeoutException):
        return f"the Atoll server at {url} did not answer in time"
    return f"cannot reach the Atoll server at {url} (is `atoll serve` running?)"


@dataclass
class ChatState:
    """Where the conversation is."""

    thread_id: str | None = None
    agent: str | None = None
    threads: list[dict[str, Any]] = field(default_factory=list)
    threads_cursor: str | None = None
    status: str = ""
    """One line about the run in progress (shown in the status bar)."""


def split_blocks(text: str) -> tuple[list[str], str]:
    """``text`` cut into finished Markdown blocks (ended by a blank line outside a code
    fence) and the unfinished rest."""
    blocks: list[str] = []
    start = 0
    fenced = False
    position = 0
    for line in text.splitlines(keepends=True):
        position += len(line)
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and not line.strip() and line.endswith("\n"):
            block = text[start:position].strip("\n")
            if block:
                blocks.append(block)
            start = position
    return blocks, text[start:]


class RunPrinter:
    """Prints one run's events as they arrive."""

    def __init__(self, console: Console, state: ChatState, refresh: Callable[[], None]) -> None:
        self.console = console
        self.state = state
        self.refresh = refresh
        self.pending = ""
        """Answer text not printed yet (the block being written)."""
        self.answer = ""
        self.final: dict[str, Any] | None = None

    def _status(self, text: str) -> None:
        self.state.status = text
        self.refresh()

    def _markdown(self, text: str) -> None:
        self.console.print(Markdown(text, code_theme="ansi_dark", hyperlinks=False))

    def _flush(self, *, everything: bool = False) -> None:
        blocks, rest = split_blocks(self.pending)
        if everything:
            blocks, rest = [*blocks, rest] if rest.strip() else blocks, ""
        for block in blocks:
            self._markdown(block)
        self.pending = rest

    def event(self, event: dict[str, Any]) -> None:
        """Render one event."""
        kind, data = event["type"], event.get("data", {})
        parent = event.get("parent_agent")
        who = escape(event["agent"] + (f" (asked by {parent})" if parent else ""))
        if kind == "agent_started":
            if parent:
                self.console.print(f"[dim]→ {who} started[/]")
            self._status(f"{who} is working…")
        elif kind == "agent_thinking":
            self.console.print(f"[dim italic]{who} thinks: {escape(str(data.get('text', '')))}[/]")
            self._status(f"{who} is working…")
        elif kind == "tool_executing":
            self._status(f"{who} calls {escape(str(data.get('tool')))}…")
        elif kind == "tool_completed":
            body = data.get("result") if data.get("ok") else data.get("error")
            text = body if isinstance(body, str) else json.dumps(body, indent=2)
            title = f"tool {data.get('tool')} · {'ok' if data.get('ok') else 'failed'}"
            took = f"{round(data.get('duration_ms') or 0)} ms"
            self.console.print(Panel(text, title=title, subtitle=took, expand=False))
        elif kind == "message_delta" and not parent:
            delta = data.get("delta", "")
            self.answer += delta
            self.pending += delta
            self._flush()
            preview = self.pending.strip().splitlines()[-1:] or [""]
            self._status(f"writing… {preview[0][-60:]}")
        elif kind in ("agent_completed", "agent_error", "agent_cancelled") and not parent:
            self.final = event
            if kind == "agent_completed" and not self.answer:
                self.pending = data["message"]["content"]
            self._flush(everything=True)
            self._status("")
            took = data.get("duration_ms")
            seconds = f" · {took / 1000:.1f} s" if isinstance(took, int | float) else ""
            if kind == "agent_completed":
                self.console.print(f"[green]✓ completed{seconds}[/]")
            elif kind == "agent_error":
                failed = escape(f"{data.get('state')}: {data.get('message')}")
                self.console.print(f"[red]✗ {failed}[/]")
            else:
                self.console.print(f"[yellow]cancelled ({escape(str(data.get('reason')))})[/]")


class TerminalChat:
    """The conversation and its socket, reconnecting as needed."""

    def __init__(
        self,
        client: AtollClient,
        console: Console,
        state: ChatState,
        refresh: Callable[[], None] = lambda: None,
    ) -> None:
        self.client = client
        self.console = console
        self.state = state
        self.refresh = refresh
        self.socket: AtollSocket | None = None
        self.current: str | None = None
        """The run being followed."""
        self._stack = contextlib.AsyncExitStack()

    async def connect(self) -> AtollSocket:
        """(Re)open the socket, with backoff."""
        delay = 0.5
        while True:
            with contextlib.suppress(*NETWORK_ERRORS, ApiError):
                await self._stack.aclose()
                self._stack = contextlib.AsyncExitStack()
                self.socket = await self._stack.enter_async_context(self.client.connect())
                return self.socket
            self.console.print(f"[yellow]connection lost; retrying in {delay:.1f}s[/]")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)

    async def aclose(self) -> None:
        """Close the socket."""
        with contextlib.suppress(*NETWORK_ERRORS):
            await self._stack.aclose()

    async def ask(self, text: str) -> dict[str, Any] | None:
        """Send a message and render its run; returns the terminal event."""
        socket = self.socket or await self.connect()
        ack = await socket.send_message(
            text, thread_id=self.state.thread_id, agent=self.state.agent
        )
        if ack.get("type") == "error":
            self.console.print(f"[red]not sent: {escape(str(ack.get('detail')))}[/]")
            return None
        self.state.thread_id = ack["thread_id"]
        return await self.follow(ack["run_id"])

    async def cancel(self) -> bool:
        """Ask the server to stop the run being followed; False when none is."""
        if self.current is None:
            return False
        self.console.print("[yellow]cancelling…[/]")
        with contextlib.suppress(*NETWORK_ERRORS):
            if self.socket is not None:
                await self.socket.send({"type": "cancel", "run_id": self.current})
                return True
        with contextlib.suppress(*NETWORK_ERRORS, ApiError):
            await self.client.request("POST", f"/runs/{self.current}/cancel")
        return True

    async def follow(self, run_id: str) -> dict[str, Any] | None:
        """Render the run to its end, resuming after a dropped connection.

        Cancelling the task that follows (Ctrl+C in ``--once``) sends a cancel for the
        run and keeps rendering until its terminal event arrives.
        """
        printer = RunPrinter(self.console, self.state, self.refresh)
        self.current = run_id
        last = 0
        try:
            while printer.final is None:
                socket = self.socket or await self.connect()
                try:
                    async for event in socket.run_events(run_id):
                        last = event["seq"]
                        printer.event(event)
                except (websockets.ConnectionClosed, OSError):
                    self.socket = None
                    await (await self.connect()).resume(run_id, last)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    await self.cancel()
        finally:
            self.current = None
            self.state.status = ""
            self.refresh()
        return printer.final

    async def command(self, line: str) -> bool:
        """Run a slash command; False means quit."""
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        if name in ("/quit", "/exit"):
            return False
        try:
            if name == "/new":
                self.state.thread_id = None
                self.console.print("[cyan]new thread[/] — your next message starts it")
            elif name == "/threads":
                await self._threads(more=argument == "more")
            elif name == "/switch":
                await self._switch(argument)
            elif name == "/cancel":
                if not await self.cancel():
                    self.console.print("nothing is running")
            else:
                self.console.print(HELP, markup=False)
        except (*NETWORK_ERRORS, ApiError) as exc:
            self.console.print(f"[red]{escape(friendly(exc, self.client.base_url))}[/]")
        return True

    async def _threads(self, *, more: bool) -> None:
        if more and self.state.threads_cursor is None:
            self.console.print("that was all of them")
            return
        params: dict[str, Any] = {"limit": THREADS_PAGE}
        if more:
            params["cursor"] = self.state.threads_cursor
        page = await self.client.request("GET", "/threads", params=params)
        first = len(self.state.threads) + 1 if more else 1
        self.state.threads = [*self.state.threads, *page["items"]] if more else page["items"]
        self.state.threads_cursor = page["next_cursor"]
        for index, thread in enumerate(page["items"], first):
            mark = "*" if thread["id"] == self.state.thread_id else " "
            self.console.print(f"{mark} {index}. {thread['title'] or 'Untitled'}", markup=False)
        if not self.state.threads:
            self.console.print("no threads yet")
        elif page["next_cursor"]:
            self.console.print("[dim]… more: /threads more[/]")

    async def _switch(self, argument: str) -> None:
        target = self._thread_for(argument)
        if target is None:
            self.console.print("usage: /switch N (see /threads)")
            return
        self.state.thread_id = target["id"]
        page = await self.client.request(
            "GET",
            f"/threads/{target['id']}/messages",
            params={"order": "desc", "limit": HISTORY_SHOWN},
        )
        messages = page["items"][::-1]
        earlier = " (latest messages; earlier ones are on the page)" if page["next_cursor"] else ""
        self.console.rule(escape(f"{target['title'] or 'Untitled'}{earlier}"))
        for message in messages:
            if message["role"] == "user":
                self.console.print(f"[bold]you>[/] {escape(message['content'])}", highlight=False)
            else:
                self.console.print(Markdown(message["content"], code_theme="ansi_dark"))
        self.console.print(f"[cyan]switched to[/] {escape(target['title'] or 'Untitled')}")

    def _thread_for(self, argument: str) -> dict[str, Any] | None:
        if argument.isdigit() and 0 < int(argument) <= len(self.state.threads):
            return self.state.threads[int(argument) - 1]
        return next((t for t in self.state.threads if t["id"] == argument), None)


class Conversation:
    """The interactive loop: reads lines while runs stream, one run at a time."""

    def __init__(self, chat: TerminalChat) -> None:
        self.chat = chat
        self.queued: list[str] = []
        self.worker: asyncio.Task[None] | None = None

    def busy(self) -> bool:
        return self.worker is not None and not self.worker.done()

    def submit(self, text: str) -> None:
        """Ask now, or after the run in progress."""
        if self.busy():
            self.queued.append(text)
            self.chat.console.print("[dim]queued: sent when this answer ends (/cancel stops it)[/]")
            return
        self.queued.append(text)
        self.worker = asyncio.create_task(self._work())

    async def _work(self) -> None:
        while self.queued:
            text = self.queued.pop(0)
            try:
                await self.chat.ask(text)
            except (*NETWORK_ERRORS, ApiError) as exc:
                failure = escape(friendly(exc, self.chat.client.base_url))
                self.chat.console.print(f"[red]{failure}[/]")

    async def line(self, line: str) -> bool:
        """Handle one typed line; False means quit."""
        line = line.strip()
        if not line:
            return True
        if line.startswith("/"):
            return await self.chat.command(line)
        self.submit(line)
        return True

    async def interrupt(self) -> None:
        """Ctrl+C: stop the run in progress (a message typed meanwhile is still sent)."""
        if not await self.chat.cancel():
            self.chat.console.print("(Ctrl+D or /quit to leave)")

    async def finish(self) -> None:
        """Wait for the run in progress (it was asked to stop if the user quit)."""
        if self.worker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker


async def interactive(chat: TerminalChat) -> int:
    """Read lines with prompt_toolkit (the input line stays below the output) on a
    terminal, or plain lines from a pipe."""
    chat.console.print(f"[bold]Atoll[/] — {HELP}", highlight=False)
    conversation = Conversation(chat)
    if not sys.stdin.isatty():
        while True:
            try:
                line = await asyncio.to_thread(input)
            except EOFError:
                break
            if not await conversation.line(line):
                break
            await conversation.finish()  # a pipe has no one to type /cancel: one at a time
        await conversation.finish()
        return 0

    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    def toolbar() -> str:
        return chat.state.status or "Enter sends · /help · Ctrl+C stops a run · Ctrl+D quits"

    session: PromptSession[str] = PromptSession(bottom_toolbar=toolbar)
    chat.refresh = lambda: session.app.invalidate() if session.app.is_running else None
    with patch_stdout(raw=True):
        while True:
            try:
                line = await session.prompt_async("you> ")
            except KeyboardInterrupt:
                await conversation.interrupt()
                continue
            except EOFError:
                break
            if not await conversation.line(line):
                break
        if conversation.busy():
            await chat.cancel()
        await conversation.finish()
    return 0


def read_password(password_stdin: bool) -> str:
    """The password: from standard input, ``ATOLL_PASSWORD``, or a prompt."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return os.environ.get("ATOLL_PASSWORD") or getpass.getpass("Password: ")


async def sign_in_asking_again(
    client: AtollClient, console: Console, email: str, password: Callable[[], str], *, tries: int
) -> bool:
    """Log in, asking again after a wrong password (``tries`` times in all)."""
    for attempt in range(1, tries + 1):
        try:
            await client.login(email, await asyncio.to_thread(password))
            return True
        except ApiError as exc:
            console.print(f"[red]login failed: {escape(str(exc.problem.get('detail')))}[/]")
            if exc.code != "invalid_credentials" or attempt == tries:
                return False
    return False


async def run_chat(
    *,
    url: str,
    email: str | Callable[[], str],
    password: Callable[[], str],
    agent: str | None,
    thread: str | None,
    once: str | None,
    password_tries: int = PASSWORD_TRIES,
) -> int:
    """Log in and chat (or ask once and print the answer). Returns the exit status."""
    console = Console(highlight=False, stderr=once is not None)
    async with AtollClient(url) as client:
        try:
            await client.http.get("/healthz")  # before asking anything of the user
        except NETWORK_ERRORS as exc:
            console.print(f"[red]{escape(friendly(exc, url))}[/]")
            return 2
        address = email if isinstance(email, str) else await asyncio.to_thread(email)
        try:
            if not await sign_in_asking_again(
                client, console, address, password, tries=password_tries
            ):
                return 1
        except NETWORK_ERRORS as exc:
            console.print(f"[red]{escape(friendly(exc, url))}[/]")
            return 2
        chat = TerminalChat(client, console, ChatState(thread_id=thread, agent=agent))
        try:
            if once is not None:
                return await ask_once(chat, once)
            return await interactive(chat)
        except NETWORK_ERRORS as exc:
            console.print(f"[red]{escape(friendly(exc, url))}[/]")
            return 2
        finally:
            await chat.aclose()


async def ask_once(chat: TerminalChat, question: str) -> int:
    """``--once``: render the run on standard error, print the answer on standard output."""
    task = asyncio.ensure_future(chat.ask(question))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, task.cancel)  # Ctrl+C stops the run, then exits
    try:
        final = await task
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if final is None or final["type"] != "agent_completed":
        return 1
    print(final["data"]["message"]["content"])
    return 0
