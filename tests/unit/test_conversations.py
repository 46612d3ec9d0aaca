"""Splitting a conversation another protocol sends whole, and naming a traced route."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from atoll.server.conversations import split_conversation, text_of
from atoll.server.middleware import full_route

pytestmark = pytest.mark.unit


def test_the_last_user_message_is_the_input_and_only_user_and_assistant_text_is_stored() -> None:
    messages = [
        ("system", "be terse"),
        ("user", "one"),
        ("assistant", ""),  # empty: nothing to store
        ("tool", "{}"),
        ("assistant", "two"),
        ("user", [SimpleNamespace(text="th"), SimpleNamespace(text="ree")]),
        ("assistant", "prefill, ignored"),
    ]
    assert split_conversation(messages) == ("three", [("user", "one"), ("assistant", "two")])


def test_no_user_message_is_no_input() -> None:
    assert split_conversation([("assistant", "hi"), ("system", "x")]) == ("", [])
    assert split_conversation([]) == ("", [])


def test_text_of_reads_strings_and_text_parts_only() -> None:
    assert text_of(None) == ""
    assert text_of([SimpleNamespace(text="a"), SimpleNamespace(url="img"), "b"]) == "a"


@pytest.mark.parametrize(
    ("path", "route", "full"),
    [
        ("/api/v1/chat", "/chat", "/api/v1/chat"),
        ("/api/v1/runs/run_x/stream", "/runs/{run_id}/stream", "/api/v1/runs/{run_id}/stream"),
        ("/v1/models", "/v1/models", "/v1/models"),
        ("/healthz", "/healthz", "/healthz"),
        ("/static/1/a/b.js", "/static/{version}/{path:path}", "/static/{version}/{path:path}"),
    ],
)
def test_a_routers_prefix_is_put_back_on_its_route(path: str, route: str, full: str) -> None:
    assert full_route(path, route) == full
