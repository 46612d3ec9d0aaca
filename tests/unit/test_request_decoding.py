"""One decoding for every door (issue 23): ``load_json`` refuses what cannot be stored
wherever it is in a document, and every API route decodes its body with it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.routing import APIRoute
from hypothesis import given
from hypothesis import strategies as st

from atoll.config import Settings
from atoll.server.app import create_app
from atoll.server.bodies import StrictJSONRoute
from atoll.store.bounds import InvalidJSONError, load_json

pytestmark = pytest.mark.unit

TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
"""Storable text: any Unicode scalar value but U+0000."""
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)  # fmt: skip
REFUSED = st.sampled_from(["\x00", "\ud800", "\udfff", "\udc00\ud800"])


def places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every value's path, and every object's (where a new key can go)."""
    found = [path]
    if isinstance(value, dict):
        found += [p for k, v in value.items() for p in places(v, (*path, k))]
    elif isinstance(value, list):
        found += [p for i, v in enumerate(value) for p in places(v, (*path, i))]
    return found


@given(value=JSON)
def test_storable_documents_decode_to_themselves(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        assert load_json(text.encode()) == value


@given(value=JSON, data=st.data(), bad=REFUSED)
def test_refused_text_anywhere_is_refused_with_its_place(value: Any, data: Any, bad: str) -> None:
    path = data.draw(st.sampled_from(places(value)))
    as_key = data.draw(st.booleans())
    document: Any = {"root": value}
    parent: Any = document
    for part in ("root", *path)[:-1]:
        parent = parent[part]
    last = ("root", *path)[-1]
    target = parent[last]
    if as_key and isinstance(target, dict):
        parent[last] = {**target, f"k{bad}": 1}
    else:
        parent[last] = f"a{bad}b"
    with pytest.raises(InvalidJSONError) as refused:
        load_json(json.dumps(document).encode())
    assert refused.value.loc[0] == "root"
    assert "U+0000" in refused.value.reason or "surrogate" in refused.value.reason


@pytest.mark.parametrize(
    "body", [b"NaN", b'{"n": Infinity}', b"[1e999]", b"\xff", b"[" * 5000 + b"]" * 5000, b"{"]
)
def test_what_json_cannot_carry_back_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidJSONError):
        load_json(body)


def test_big_integers_keep_their_value() -> None:
    assert load_json(b'{"n": 1180591620717411303424}') == {"n": 2**70}


def test_every_api_route_decodes_its_body_with_load_json(tmp_path: Any) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    routes = [route for route in app.routes if isinstance(route, APIRoute)]
    assert routes and all(isinstance(route, StrictJSONRoute) for route in routes), [
        route.path for route in routes if not isinstance(route, StrictJSONRoute)
    ]
