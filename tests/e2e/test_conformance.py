"""Generated inputs against a live server: the OpenAPI document tells the truth, and no
WebSocket frame, however odd, closes a socket with 1011 or answers with a server error.

Bounded for CI (a fixed seed and budget); ``bench/adversarial.py`` runs the big version.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conformance import run_schemathesis
from serving import PASSWORD, ServeProcess, serve_process

pytestmark = [pytest.mark.e2e, pytest.mark.security]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, str]]:
    """An ``atoll serve`` process and a user's access token."""
    data = tmp_path_factory.mktemp("conformance") / "data"
    with serve_process(data, ATOLL_MESSAGES_PER_MINUTE="100000") as server:
        answer = httpx.post(
            f"{server.url}/api/v1/auth/register",
            json={"email": "fuzz@example.com", "password": PASSWORD},
        )
        yield server, answer.json()["access_token"]


@pytest.mark.timeout(600)  # ~130 s on 2 cores: 46 operations, AG-UI's input schema the largest
def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    live: tuple[ServeProcess, str],
) -> None:
    server, token = live
    # One worker: with two, hypothesis describing a filter lambda parses schemathesis's
    # source in two threads at once, which CPython 3.11 can fail with "AST constructor
    # recursion depth mismatch" (a runtime error of the tool, not a finding).
    result = run_schemathesis(server.url, token, examples=30, seed=20261201, workers=1)
    assert result.ok, result.output[-6000:]
    assert result.generated > 500
    assert "Traceback" not in server.log_text()


# -- the WebSocket frame fuzzer --------------------------------------------------------

IDS = st.one_of(st.just("run_nonexistent000000000"), st.text(max_size=80), st.integers(), st.none())
WILD = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FRAME = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "cancel", "resume", "ping", "auth", "", "x" * 300])},
    optional={
        "content": st.one_of(st.text(max_size=200), WILD),
        "run_id": IDS,
        "thread_id": IDS,
        "after": st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=25)),
        "client_id": st.one_of(st.text(max_size=200), WILD),
        "multitask": st.one_of(st.sampled_from(["reject", "enqueue", "interrupt"]), WILD),
        "agent": st.one_of(st.sampled_from(["assistant", "supervisor"]), WILD),
        "token": WILD,
    },
)
RAW = st.one_of(
    FRAME.map(json.dumps),
    WILD.map(json.dumps),
    st.text(max_size=300),
    st.binary(max_size=300),
)


class Socket:
    """One authenticated socket, reopened only if the server closed it (recorded)."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.closes: list[tuple[int | None, str | None]] = []
        self.stack = contextlib.ExitStack()
        self.connection = self._open()

    def _open(self) -> ClientConnection:
        url = self.url.replace("http", "ws") + "/api/v1/ws"
        # Unbounded receive buffer: run events pile up unread between round trips, and a
        # full buffer stops the reader, so the close handshake would wait out its timeout.
        connection = self.stack.enter_context(connect(url, open_timeout=10, max_queue=None))
        connection.send(json.dumps({"type": "auth", "token": self.token}))
        assert json.loads(connection.recv(timeout=10))["type"] == "connection_established"
        return connection

    def round_trip(self, frame: str | bytes) -> list[dict[str, Any]]:
        """Send ``frame``, then a ping; every frame received up to the pong."""
        try:
            self.connection.send(frame)
            self.connection.send(json.dumps({"type": "ping"}))
            received = []
            while True:
                item = json.loads(self.connection.recv(timeout=10))
                if item == {"type": "pong"}:
                    return received
                received.append(item)
        except ConnectionClosed as closed:
            self.closes.append((closed.rcvd.code if closed.rcvd else None, str(frame)[:80]))
            self.connection = self._open()
            return []


@pytest.fixture(scope="module")
def socket(live: tuple[ServeProcess, str]) -> Iterator[Socket]:
    server, token = live
    opened = Socket(server.url, token)
    with opened.stack:
        yield opened


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame=RAW)
def test_no_frame_closes_the_socket_with_a_server_error(socket: Socket, frame: str | bytes) -> None:
    for item in socket.round_trip(frame):
        if item.get("type") == "error":
            assert item["code"] != "internal_error", item
    assert all(code == 1008 for code, _ in socket.closes), socket.closes  # never 1011


def test_the_fuzzed_server_logged_no_traceback(live: tuple[ServeProcess, str]) -> None:
    server, _ = live
    assert "Traceback" not in server.log_text()
    assert "Exception in ASGI application" not in server.log_text()


def test_fuzzing_left_the_server_serving(live: tuple[ServeProcess, str]) -> None:
    server, token = live
    me = httpx.get(f"{server.url}/api/v1/me", headers={"authorization": f"Bearer {token}"})
    assert me.status_code == 200
