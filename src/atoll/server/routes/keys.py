"""``/keys``: a user's personal API keys (made and revoked only when signed in)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from atoll.auth.keys import KEY_PREFIX
from atoll.server.bodies import StrictJSONRoute
from atoll.server.deps import PrincipalDep, ServicesDep
from atoll.server.problems import problems
from atoll.server.schemas import Body
from atoll.store.models import ApiKey

router = APIRouter(tags=["keys"], route_class=StrictJSONRoute)


class KeyCreate(Body):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Literal["read", "chat"]] = Field(default=["read", "chat"], min_length=1)
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="Shown to tell keys apart: the key starts with it")
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None


class NewKeyOut(KeyOut):
    key: str = Field(description="The key itself: shown this once, never again")


def key_out(row: ApiKey) -> KeyOut:
    """The public view of a key (never the key)."""
    return KeyOut(
        id=row.id, name=row.name, prefix=f"{KEY_PREFIX}{row.id}", scopes=list(row.scopes),
        created_at=row.created_at, expires_at=row.expires_at,
    )  # fmt: skip


@router.post("/keys", status_code=201, responses=problems(401, 403, 409, 413, 422, 503))
async def create_key(body: KeyCreate, principal: PrincipalDep, services: ServicesDep) -> NewKeyOut:
    """Make a key for programs; the answer is the only time the key is shown."""
    made = await services.keys.create(
        principal.user_id, body.name, list(body.scopes), body.expires_in_days
    )
    return NewKeyOut(**key_out(made.row).model_dump(), key=made.key)


@router.get("/keys", responses=problems(401, 403, 503))
async def list_keys(principal: PrincipalDep, services: ServicesDep) -> list[KeyOut]:
    """Your keys that are not revoked (their prefixes, never the keys)."""
    return [key_out(row) for row in await services.keys.list(principal.user_id)]


@router.delete("/keys/{key_id}", status_code=204, responses=problems(401, 403, 404, 503))
async def revoke_key(key_id: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    """Revoke a key: refused from the next request on; sockets opened with it close and
    streams opened with it end, on every node."""
    await services.keys.revoke(principal.user_id, key_id)
    await services.auth.forget(key_id)
    return Response(status_code=204)
