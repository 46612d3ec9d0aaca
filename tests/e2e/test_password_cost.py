"""The password hash's cost is a setting: production keeps OWASP's argon2id minimum, the
tests use a cheap one, and stored hashes stay valid when it changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from atoll.config import Settings
from atoll.store.models import User

from inprocess import InProcessApp, running_app
from serving import PASSWORD, make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.security, pytest.mark.inprocess]


async def stored_hash(app: InProcessApp, email: str) -> str:
    async with app.services.db.session() as session:
        hashed = await session.scalar(select(User.password_hash).where(User.email == email))
    assert hashed is not None
    return hashed


def test_the_default_cost_is_owasps_argon2id_minimum() -> None:
    settings = Settings()
    assert (settings.password_time_cost, settings.password_memory_kib) == (2, 19_456)
    with pytest.raises(ValidationError):
        Settings(password_time_cost=0)
    with pytest.raises(ValidationError):
        Settings(password_memory_kib=8)


async def test_new_hashes_take_the_settings_cost_and_older_ones_still_verify(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    dearer = make_settings(data, password_time_cost=3, password_memory_kib=256)
    async with running_app(dearer) as app, app.client() as ada:
        await ada.register("ada@example.com", PASSWORD)
        assert (await stored_hash(app, "ada@example.com")).startswith("$argon2id$v=19$m=256,t=3,")
    cheaper = make_settings(data, password_time_cost=1, password_memory_kib=64)
    async with running_app(cheaper) as app, app.client() as client:
        await client.login("ada@example.com", PASSWORD)  # hashed at the old cost
        await client.register("bob@example.com", PASSWORD)
        assert (await stored_hash(app, "bob@example.com")).startswith("$argon2id$v=19$m=64,t=1,")
