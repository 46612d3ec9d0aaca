"""``atoll chat``: the terminal client. Renders a run's timeline live with rich.

Thinking shows under a spinner, each tool call as a panel with its arguments and
result, and the answer streams in. A dropped connection is reconnected with
backoff and the run resumed from the last ``seq`` seen. Commands: ``/new``,
``/threads``, ``/switch N``, ``/cancel`` (or Ctrl+C during a run), ``/quit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import websockets
from rich.console import Console
from rich.panel import Panel
from rich.status import Status

from atoll.client import ApiError, AtollClient, AtollSocket

HELP = "/new  /threads  /switch N  /cancel  /quit   (Enter sends; Ctrl+C cancels a run)"


@dataclass
class ChatState:
    """Where the conversation is."""

    thread_id: str | None = None
    agent: str | None = None
    threads: list[dict[str, Any]] = field(default_factory=list)


class RunPrinter:
    """Prints one run's events as they arrive."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.status: Status | None = None
        self.streaming = False
        self.answer = ""
        self.final: dict[str, Any] | None = None

    def _stop_status(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def _line(self) -> None:
        if self.streaming:
            self.console.print()
            self.streaming = False

    def event(self, event: dict[str, Any]) -> None:
        """Render one event."""
        kind, data = event["type"], event.get("data", {})
        who = event["agent"] + (f" (for {event['parent_agent']})" if event["parent_agent"] else "")
        if kind == "agent_started":
            self._line()
            self._stop_status()
            self.status = self.console.status(f"{who} is working…")
            self.status.start()
        elif kind == "agent_thinking":
            self._stop_status()
            self.console.print(f"[dim italic]{who} thinks: {data.get('text', '')}[/]")
            self.status = self.console.status(f"{who} is working…")
            self.status.start()
        elif kind == "tool_executing":
            self._stop_status()
            self.status = self.console.status(f"{who} calls {data.get('tool')}…")
            self.status.start()
        elif kind == "tool_completed":
            self._stop_status()
            body = json.dumps(data.get("result") if data.get("ok") else data.get("error"))
            title = f"tool {data.get('tool')} · {'ok' if data.get('ok') else 'failed'}"
            self.console.print(Panel(body, title=title, subtitle=f"{data.get('duration_ms')} ms"))
        elif kind == "message_delta" and not event["parent_agent"]:
            self._stop_status()
            self.console.print(data.get("delta", ""), end="", markup=False, highlight=False)
            self.streaming = True
            self.answer += data.get("delta", "")
        elif kind in ("agent_completed", "agent_error", "agent_cancelled"):
            if event["parent_agent"]:
                return
            self._stop_status()
            self._line()
            self.final = event
            if kind == "agent_completed":
                if not self.answer:
                    self.console.print(data["message"]["content"], markup=False)
                self.console.print("[green]✓ completed[/]")
            elif kind == "agent_error":
                self.console.print(f"[red]✗ {data.get('state')}: {data.get('message')}[/]")
            else:
                self.console.print(f"[yellow]cancelled ({data.get('reason')})[/]")

    def close(self) -> None:
        """Stop any spinner."""
        self._stop_status()


class TerminalChat:
    """The interactive loop and its socket, reconnecting as needed."""

    def __init__(self, client: AtollClient, console: Console, state: ChatState) -> None:
        self.client = client
        self.console = console
        self.state = state
        self.socket: AtollSocket | None = None
        self._stack = contextlib.AsyncExitStack()

    async def connect(self) -> AtollSocket:
        """(Re)open the socket, with backoff."""
        delay = 0.5
        while True:
            with contextlib.suppress(OSError, websockets.WebSocketException, ApiError):
                await self._stack.aclose()
                self._stack = contextlib.AsyncExitStack()
                self.socket = await self._stack.enter_async_context(self.client.connect())
                return self.socket
            self.console.print(f"[yellow]connection lost; retrying in {delay:.1f}s[/]")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)

    async def aclose(self) -> None:
        """Close the socket."""
        await self._stack.aclose()

    async def ask(self, text: str) -> dict[str, Any] | None:
        """Send a message and render its run; returns the terminal event."""
        socket = self.socket or await self.connect()
        ack = await socket.send_message(
            text, thread_id=self.state.thread_id, agent=self.state.agent
        )
        if ack.get("type") == "error":
            self.console.print(f"[red]{ack.get('code')}: {ack.get('detail')}[/]")
            return None
        self.state.thread_id = ack["thread_id"]
        return await self.follow(ack["run_id"])

    async def follow(self, run_id: str) -> dict[str, Any] | None:
        """Render the run to its end, resuming after a dropped connection.

        Cancelling the task that follows (Ctrl+C) sends a cancel for the run and keeps
        rendering until its terminal event arrives.
        """
        printer = RunPrinter(self.console)
        last = 0
        try:
            while printer.final is None:
                socket = self.socket or await self.connect()
                try:
                    async for event in socket.run_events(run_id):
                        last = event["seq"]
                        printer.event(event)
                except (websockets.ConnectionClosed, OSError):
                    printer.close()
                    self.socket = None
                    await (await self.connect()).resume(run_id, last)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    printer.close()
                    self.console.print("[yellow]cancelling…[/]")
                    if self.socket is not None:
                        await self.socket.send({"type": "cancel", "run_id": run_id})
        finally:
            printer.close()
        return printer.final

    async def command(self, line: str) -> bool:
        """Run a slash command; False means quit."""
        name, _, argument = line.partition(" ")
        if name in ("/quit", "/exit"):
            return False
        if name == "/new":
            self.state.thread_id = None
            self.console.print("[cyan]new thread[/] — your next message starts it")
        elif name == "/threads":
            page = await self.client.request("GET", "/threads", params={"limit": 20})
            self.state.threads = page["items"]
            for index, thread in enumerate(self.state.threads, 1):
                mark = "*" if thread["id"] == self.state.thread_id else " "
                self.console.print(f"{mark} {index}. {thread['title'] or 'Untitled'}", markup=False)
            if not self.state.threads:
                self.console.print("no threads yet")
        elif name == "/switch":
            target = self._thread_for(argument.strip())
            if target is None:
                self.console.print("usage: /switch N (see /threads)")
            else:
                self.state.thread_id = target["id"]
                self.console.print(f"[cyan]switched to[/] {target['title'] or 'Untitled'}")
        elif name == "/cancel":
            self.console.print("nothing is running (press Ctrl+C during a run to cancel it)")
        else:
            self.console.print(HELP)
        return True

    def _thread_for(self, argument: str) -> dict[str, Any] | None:
        if argument.isdigit() and 0 < int(argument) <= len(self.state.threads):
            return self.state.threads[int(argument) - 1]
        return next((t for t in self.state.threads if t["id"] == argument), None)


async def _read_line(prompt: str) -> str | None:
    try:
        return await asyncio.to_thread(input, prompt)
    except EOFError:
        return None


async def interactive(chat: TerminalChat) -> int:
    """The read–send–render loop. Ctrl+C cancels the run in progress."""
    chat.console.print(f"[bold]Atoll[/] — {HELP}")
    running: list[asyncio.Task[Any]] = []

    def on_interrupt() -> None:
        if running and not running[0].done():
            running[0].cancel()
        else:
            chat.console.print("\n(type /quit to leave)")

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        while True:
            line = await _read_line("you> ")
            if line is None:
                return 0
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not await chat.command(line):
                    return 0
                continue
            running[:] = [asyncio.ensure_future(chat.ask(line))]
            await running[0]
            running.clear()
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def read_password(password_stdin: bool) -> str:
    """The password: from standard input, ``ATOLL_PASSWORD``, or a prompt."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return os.environ.get("ATOLL_PASSWORD") or getpass.getpass("Password: ")


async def run_chat(
    *,
    url: str,
    email: str,
    password: str,
    agent: str | None,
    thread: str | None,
    once: str | None,
) -> int:
    """Log in and chat (or ask once and print the answer)."""
    console = Console(highlight=False, stderr=once is not None)
    async with AtollClient(url) as client:
        try:
            await client.login(email, password)
        except ApiError as exc:
            console.print(f"[red]login failed: {exc.problem.get('detail')}[/]")
            return 1
        chat = TerminalChat(client, console, ChatState(thread_id=thread, agent=agent))
        try:
            if once is not None:
                final = await chat.ask(once)
                if final is None or final["type"] != "agent_completed":
                    return 1
                print(final["data"]["message"]["content"])
                return 0
            return await interactive(chat)
        finally:
            await chat.aclose()
