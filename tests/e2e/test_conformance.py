"""Generated inputs against a live server: the OpenAPI document tells the truth, no
WebSocket frame, however odd, closes a socket with 1011 or answers with a server error,
and text no door may store (U+0000, lone surrogates), put anywhere in a body of the
REST, OpenAI-compatible or AG-UI door, is a 422 that stores nothing.

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


# -- refused text, anywhere in a body, on every door -----------------------------------

REFUSED_CHARACTER = st.just("\x00") | st.characters(categories=["Cs"])
REFUSED_TEXT = st.builds(
    lambda before, bad, after: before + bad + after,
    st.text(max_size=4),
    REFUSED_CHARACTER,
    st.text(max_size=4),
)
VALID_BODIES = {
    "/v1/chat/completions": {
        "model": "assistant",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ada"},
        ],
        "stream": False,
        "user": "someone",
    },
    "/api/v1/agui": {
        "threadId": "client-thread",
        "runId": "client-run",
        "messages": [
            {"id": "m1", "role": "user", "content": "hi"},
            {"id": "m2", "role": "assistant", "content": "hello"},
            {"id": "m3", "role": "user", "content": [{"type": "text", "text": "more"}]},
        ],
        "tools": [{"name": "frontend", "description": "d", "parameters": {}}],
        "context": [{"description": "page", "value": "home"}],
        "state": {"k": "v"},
        "forwardedProps": {"p": ["q"]},
    },
    "/api/v1/chat": {"message": "hi", "agent": "assistant", "metadata": {"k": "v"}},
}
"""A body each door accepts; the test puts refused text in one place of it."""


def text_places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every string of ``value`` and every object (where a key can go)."""
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [path] + [p for k, v in value.items() for p in text_places(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in text_places(v, (*path, i))]
    return []


def with_text(body: Any, path: tuple[Any, ...], bad: str) -> Any:
    """``body`` (a copy) with ``bad`` as the string at ``path``, or as a new key of the
    object there."""
    body = json.loads(json.dumps(body))
    if not path:
        return {**body, bad: bad} if isinstance(body, dict) else bad
    parent = body
    for part in path[:-1]:
        parent = parent[part]
    target = parent[path[-1]]
    parent[path[-1]] = {**target, bad: 1} if isinstance(target, dict) else bad
    return body


PLACED = st.sampled_from(sorted(VALID_BODIES)).flatmap(
    lambda door: st.tuples(
        st.just(door), st.sampled_from(text_places(VALID_BODIES[door])), REFUSED_TEXT
    )
)


@pytest.fixture(scope="module")
def bystander(live: tuple[ServeProcess, str]) -> Iterator[httpx.Client]:
    """A user of its own (so "nothing stored" is theirs alone), as an HTTP client."""
    server, _ = live
    answer = httpx.post(
        f"{server.url}/api/v1/auth/register",
        json={"email": "refused@example.com", "password": PASSWORD},
    )
    token = answer.json()["access_token"]
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        yield http


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(placed=PLACED)
def test_refused_text_anywhere_is_a_422_on_every_door(
    bystander: httpx.Client, placed: tuple[str, tuple[Any, ...], str]
) -> None:
    door, path, bad = placed
    body = with_text(VALID_BODIES[door], path, bad)
    answer = bystander.post(door, content=json.dumps(body))  # escapes: \u0000, \ud800
    assert answer.status_code == 422, (door, path, answer.text)
    error = answer.json()["error"] if door.startswith("/v1/") else answer.json()
    assert error["code"] == "validation_error", answer.text


def test_refused_text_stored_nothing(bystander: httpx.Client) -> None:
    assert bystander.get("/api/v1/threads").json()["items"] == []
    accepted = bystander.post("/api/v1/chat", json=VALID_BODIES["/api/v1/chat"])
    assert accepted.status_code == 202  # the bodies were valid but for the refused text


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
