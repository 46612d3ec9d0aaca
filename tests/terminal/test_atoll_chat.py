"""`atoll chat` driven through a pseudo-terminal (pexpect) against `atoll serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pexpect
import pytest

from serving import PASSWORD, serve_process

pytestmark = pytest.mark.e2e


def register(url: str, email: str) -> None:
    answer = httpx.post(f"{url}/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    answer.raise_for_status()


def test_interactive_chat(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with serve_process(data) as server:
        register(server.url, "tty@example.com")
        env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
        env.pop("ATOLL_PASSWORD", None)
        child = pexpect.spawn(
            sys.executable,
            ["-m", "atoll.cli", "chat", "--url", server.url, "--email", "tty@example.com"],
            env=env, encoding="utf-8", timeout=30, dimensions=(40, 100),
        )  # fmt: skip
        try:
            child.expect("Password:")
            child.sendline(PASSWORD)
            child.expect("you> ")
            child.sendline("What is 17*23?")
            child.expect("tool calculator")
            child.expect("391")
            child.expect("completed")
            child.expect("you> ")
            child.sendline("/new")
            child.expect("new thread")
            child.expect("you> ")
            child.sendline("What time is it in Asia/Tokyo?")
            child.expect("tool current_time")
            child.expect("Asia/Tokyo")
            child.expect("you> ")
            child.sendline("/threads")
            child.expect(r"\* 1\. What time is it")
            child.expect("2. What is 17")
            child.expect("you> ")
            child.sendline("/switch 2")
            child.expect("switched to.*What is 17")
            child.expect("you> ")
            child.sendline("/quit")
            child.expect(pexpect.EOF)
        finally:
            child.close()
        assert child.exitstatus == 0


def test_once_prints_the_answer_and_exits_zero(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with serve_process(data) as server:
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
        assert wrong.returncode == 1
        assert "login failed" in wrong.stderr


def test_reconnects_and_resumes_after_a_server_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with serve_process(data, ATOLL_OFFLINE_TOKEN_DELAY="0.5", ATOLL_SHUTDOWN_GRACE="0") as server:
        register(server.url, "resume@example.com")
        child = pexpect.spawn(
            sys.executable,
            ["-m", "atoll.cli", "chat", "--url", server.url, "--email", "resume@example.com",
             "--agent", "assistant"],
            env={**os.environ, "ATOLL_PASSWORD": PASSWORD}, encoding="utf-8", timeout=30,
        )  # fmt: skip
        try:
            child.expect("you> ")
            child.sendline("hello")
            child.expect("Hello!")  # the answer has started streaming
            server.stop(signal.SIGTERM)
            child.expect("connection lost")
            server.start()
            child.expect(r"cancelled \(shutdown\)")
            child.expect("you> ")
            child.sendline("What is 2+3?")
            child.expect("completed")
            child.sendline("/quit")
            child.expect(pexpect.EOF)
        finally:
            child.close()
        assert child.exitstatus == 0
