"""`atoll chat` driven through a pseudo-terminal (pexpect) against `atoll serve`."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pexpect
import pytest

from serving import PASSWORD, serve_process

pytestmark = pytest.mark.e2e
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")


def register(url: str, email: str) -> str:
    answer = httpx.post(f"{url}/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    answer.raise_for_status()
    return str(answer.json()["access_token"])


CURSOR_QUERY = "\x1b[6n"
ROWS = 40


class Terminal(pexpect.spawn):  # type: ignore[misc]
    """A pseudo-terminal that also answers cursor position requests, as xterm and tmux
    do (prompt_toolkit shows its status bar only when they are answered)."""

    def expect(self, pattern: object, timeout: float = -1, **kwargs: object) -> int:
        patterns = pattern if isinstance(pattern, list) else [pattern]
        while True:
            index: int = super().expect([*patterns, re.escape(CURSOR_QUERY)], timeout, **kwargs)
            if index < len(patterns):
                return index
            self.send(f"\x1b[{ROWS};1R")


def terminal_env(**extra: str) -> dict[str, str]:
    """The environment of ``atoll chat`` in the pseudo-terminal: its size is the terminal's
    own, never ``COLUMNS``/``LINES`` inherited from the test's environment (a shell may
    export them, pytest-xdist's workers set 80x24)."""
    env = {**os.environ, "TERM": "xterm", **extra}
    for inherited in ("COLUMNS", "LINES"):
        env.pop(inherited, None)
    if "ATOLL_PASSWORD" not in extra:
        env.pop("ATOLL_PASSWORD", None)
    return env


@contextmanager
def atoll_chat(
    url: str, email: str, *args: str, columns: int = 100, **env: str
) -> Iterator[Terminal]:
    child = Terminal(
        sys.executable,
        ["-m", "atoll.cli", "chat", "--url", url, "--email", email, *args],
        env=terminal_env(**env), encoding="utf-8", timeout=30, dimensions=(ROWS, columns),
    )  # fmt: skip
    try:
        yield child
    finally:
        child.close()


def test_interactive_chat(tmp_path: Path) -> None:
    with serve_process(tmp_path / "data") as server:
        register(server.url, "tty@example.com")
        with atoll_chat(server.url, "tty@example.com") as child:
            child.expect("Password:")
            child.sendline(PASSWORD)
            child.expect("you>")
            child.sendline("What is 17*23?")
            child.expect("tool calculator")
            child.expect("391")
            child.expect("completed")
            child.sendline("/new")
            child.expect("new thread")
            child.sendline("What time is it in Asia/Tokyo?")
            child.expect("tool current_time")
            child.expect("Asia/Tokyo")
            child.expect("completed")
            child.sendline("/threads")
            child.expect(r"\* 1\. What time is it")
            child.expect("2. What is 17")
            child.sendline("/switch 2")
            child.expect("What is 17\\*23\\?")  # the thread's history is shown
            child.expect("17\\*23 = 391")
            child.expect("switched to.*What is 17")
            child.sendline("/quit")
            child.expect(pexpect.EOF)
        assert child.exitstatus == 0


def test_cancel_is_read_while_the_answer_streams_and_typing_does_not_mix_in(
    tmp_path: Path,
) -> None:
    with serve_process(tmp_path / "data", ATOLL_OFFLINE_TOKEN_DELAY="0.4") as server:
        register(server.url, "cancel@example.com")
        with atoll_chat(
            server.url, "cancel@example.com", "--agent", "assistant", ATOLL_PASSWORD=PASSWORD
        ) as child:
            child.expect("you>")
            child.sendline("hello")
            child.expect("writing…")  # streaming (the preview in the status bar)
            child.sendline("What is 2+2?")  # typed during the run: queued, not mixed in
            child.expect("queued: sent when this answer ends")
            child.sendline("/cancel")  # read at once, not after the answer
            child.expect(r"cancelled \(user\)", timeout=5)
            child.expect("2\\+2 = 4")  # then the queued question is asked, never lost
            child.expect("completed")
            child.sendline("/quit")
            child.expect(pexpect.EOF)
        assert child.exitstatus == 0


def test_a_message_typed_during_a_run_is_sent_after_it(tmp_path: Path) -> None:
    with serve_process(tmp_path / "data", ATOLL_OFFLINE_TOKEN_DELAY="0.2") as server:
        register(server.url, "queue@example.com")
        with atoll_chat(
            server.url, "queue@example.com", "--agent", "assistant", ATOLL_PASSWORD=PASSWORD
        ) as child:
            child.expect("you>")
            child.sendline("hello")
            child.expect("writing…")
            child.sendline("What is 3*3?")
            child.expect("queued")
            child.expect("completed")  # the first answer ends ...
            child.expect("3\\*3 = 9")  # ... then the queued question is answered
            child.expect("completed")
            child.sendline("/quit")
            child.expect(pexpect.EOF)


def test_answers_wrap_at_words(tmp_path: Path) -> None:
    with serve_process(tmp_path / "data") as server:
        register(server.url, "wrap@example.com")
        with atoll_chat(
            server.url, "wrap@example.com", "--agent", "assistant", columns=38,
            ATOLL_PASSWORD=PASSWORD,
        ) as child:  # fmt: skip
            child.logfile_read = io.StringIO()
            child.expect("you>")
            child.sendline("hello")
            child.expect("completed")
            shown = ANSI.sub("", child.logfile_read.getvalue())
            child.sendline("/quit")
            child.expect(pexpect.EOF)
    greeting = (
        "Hello! I am Atoll's offline model. I can do arithmetic with the calculator, tell the "
        "time and search Atoll's documentation. (Answered by Atoll's offline model: "
        "deterministic, no language model connected.)"
    )
    # The answer as printed (the status bar's live preview may have shown its start before).
    found = re.findall(r"Hello!(?:(?!Hello!).)*?connected\.\)", shown, re.S)
    assert found, shown
    printed = found[-1]
    lines = printed.split("\n")
    assert len(lines) >= 4  # wrapped at 38 columns ...
    assert " ".join(printed.split()) == greeting  # ... between words, never inside one
    assert all(len(line.rstrip()) <= 38 for line in lines)


def test_threads_are_paged(tmp_path: Path) -> None:
    with serve_process(tmp_path / "data") as server:
        token = register(server.url, "pages@example.com")
        headers = {"Authorization": f"Bearer {token}"}
        for number in range(25):
            created = httpx.post(
                f"{server.url}/api/v1/threads", json={"title": f"topic {number}"}, headers=headers
            )
            created.raise_for_status()
        with atoll_chat(server.url, "pages@example.com", ATOLL_PASSWORD=PASSWORD) as child:
            child.expect("you>")
            child.sendline("/threads")
            child.expect("1. topic 24")
            child.expect("20. topic 5")
            child.expect("more: /threads more")
            child.sendline("/threads more")
            child.expect("21. topic 4")
            child.expect("25. topic 0")
            child.sendline("/switch 25")
            child.expect("switched to.*topic 0")
            child.sendline("/quit")
            child.expect(pexpect.EOF)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_server_that_is_down_is_said_in_words_before_the_password_is_asked() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with atoll_chat(url, "nobody@example.com") as child:
        child.expect("cannot reach the Atoll server")
        child.expect(pexpect.EOF)
        output = child.before
    assert child.exitstatus == 2
    assert "Password" not in output and "Traceback" not in output


def test_a_wrong_password_is_asked_again(tmp_path: Path) -> None:
    with serve_process(tmp_path / "data") as server:
        register(server.url, "retry@example.com")
        with atoll_chat(server.url, "retry@example.com") as child:
            child.expect("Password:")
            child.sendline("not-the-password")
            child.expect("login failed")
            child.expect("Password:")
            child.sendline(PASSWORD)
            child.expect("you>")
            child.sendline("/quit")
            child.expect(pexpect.EOF)
        assert child.exitstatus == 0


def test_once_prints_the_answer_and_exits_zero(tmp_path: Path) -> None:
    with serve_process(tmp_path / "data") as server:
        register(server.url, "once@example.com")
        result = subprocess.run(
            [sys.executable, "-m", "atoll.cli", "chat", "--url", server.url,
             "--email", "once@example.com", "--password-stdin", "--once", "What is 6*7?"],
            input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("6*7 = 42")
        wrong = subprocess.run(
            [sys.executable, "-m", "atoll.cli", "chat", "--url", server.url,
             "--email", "once@example.com", "--password-stdin", "--once", "hi"],
            input="wrong-password\n", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert wrong.returncode == 1  # no second try without a terminal to ask on
        assert "login failed" in wrong.stderr and "Traceback" not in wrong.stderr


def test_reconnects_and_resumes_after_a_server_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serve_process(data, ATOLL_OFFLINE_TOKEN_DELAY="0.5", ATOLL_SHUTDOWN_GRACE="0") as server:
        register(server.url, "resume@example.com")
        with atoll_chat(
            server.url, "resume@example.com", "--agent", "assistant", ATOLL_PASSWORD=PASSWORD
        ) as child:
            child.expect("you>")
            child.sendline("hello")
            child.expect("Hello!")  # the answer has started streaming
            server.stop(signal.SIGTERM)
            child.expect("connection lost")
            server.start()
            child.expect(r"cancelled \(shutdown\)")
            child.sendline("What is 2+3?")
            child.expect("completed")
            child.sendline("/quit")
            child.expect(pexpect.EOF)
        assert child.exitstatus == 0
