"""Org admins over REST: the organisation, its members and roles, removal that ends a
member's sessions at once and keeps them out, SSO required; owner-scoped (404) and
audited with the acting user."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import websockets

from atoll.client import ApiError, AtollClient
from atoll.server.serve import running_server
from atoll.server.services import Services
from atoll.store.models import Identity, OrgMember, utcnow

from inprocess import Target, client_of, running_app
from ports import free_port
from serving import PASSWORD, make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.security, pytest.mark.inprocess]


async def join(services: Services, user_id: str, org_id: str, role: str = "member") -> None:
    """Arrange a membership as a sign-in with the org's domain makes it."""
    member = OrgMember(user_id=user_id, org_id=org_id, role=role, joined_at=utcnow())
    await services.db.write(lambda session: session.add(member))
    services.auth.sessions.clear()


@asynccontextmanager
async def served(
    tmp_path: Path, *, socket: bool, **overrides: Any
) -> AsyncIterator[tuple[Target, Services]]:
    """The app in-process, or (``socket``) a real server."""
    settings = make_settings(tmp_path / "data", **overrides)
    if socket:
        async with running_server(settings) as (url, server):
            yield url, server.config.app.state.services
    else:
        async with running_app(settings) as app:
            yield app, app.services


@asynccontextmanager
async def two_orgs(
    tmp_path: Path, *, socket: bool = False, **settings: Any
) -> AsyncIterator[tuple[Target, Services, dict[str, Any]]]:
    """Acme (admin Ada, members Bob and Cy) and Globex (admin Gil), all with passwords."""
    async with served(tmp_path, socket=socket, **settings) as (target, services):
        acme = await services.org_admin.create("Acme", "pro")
        await services.orgs.add_domain(acme.id, "acme.test")
        globex = await services.org_admin.create("Globex")
        people: dict[str, Any] = {"acme": acme.id, "globex": globex.id}
        clients: list[AtollClient] = []
        for name, org_id, role in (
            ("ada", acme.id, "admin"),
            ("bob", acme.id, "member"),
            ("cy", acme.id, "member"),
            ("gil", globex.id, "admin"),
        ):
            client = client_of(target)
            clients.append(client)
            domain = "acme.test" if org_id == acme.id else "globex.test"
            answer = await client.register(f"{name}@{domain}", PASSWORD)
            await join(services, answer["user"]["id"], org_id, role)
            people[name] = client
            people[f"{name}_id"] = answer["user"]["id"]
        try:
            yield target, services, people
        finally:
            for client in clients:
                await client.aclose()


async def refused(call: Any) -> tuple[int, str]:
    with pytest.raises(ApiError) as caught:
        await call
    return caught.value.status, caught.value.code


async def test_members_see_their_org_admins_manage_it_and_others_get_404(tmp_path: Path) -> None:
    async with two_orgs(tmp_path) as (_, services, p):
        ada, bob, gil, acme, globex = p["ada"], p["bob"], p["gil"], p["acme"], p["globex"]
        org = await ada.request("GET", f"/orgs/{acme}")
        assert (org["name"], org["role"], org["members"], org["domains"]) == (
            "Acme", "admin", 3, ["acme.test"],
        )  # fmt: skip
        assert org["plan"]["name"] == "pro" and org["plan"]["runs_at_once"] == 10
        assert (await bob.request("GET", f"/orgs/{acme}"))["role"] == "member"
        me = await bob.request("GET", "/me")
        assert me["org"] == {"id": acme, "name": "Acme", "role": "member"}
        assert me["plan"] == "pro" and me["limits"]["messages_per_minute"] == 120
        # A plain member cannot manage; another org's admin cannot even see it.
        assert await refused(bob.request("GET", f"/orgs/{acme}/members")) == (
            403, "org_admin_required",
        )  # fmt: skip
        assert await refused(bob.request("DELETE", f"/orgs/{acme}/members/{p['cy_id']}")) == (
            403, "org_admin_required",
        )  # fmt: skip
        nowhere = await refused(gil.request("GET", f"/orgs/{acme}"))
        assert nowhere == await refused(gil.request("GET", "/orgs/org_doesnotexist")) == (
            404, "not_found",
        )  # fmt: skip
        for method, path, body in (
            ("GET", f"/orgs/{acme}/members", None),
            ("PATCH", f"/orgs/{acme}", {"sso_required": False}),
            ("PATCH", f"/orgs/{acme}/members/{p['bob_id']}", {"role": "admin"}),
            ("DELETE", f"/orgs/{acme}/members/{p['bob_id']}", None),
            ("POST", f"/orgs/{acme}/members/{p['bob_id']}/restore", None),
        ):
            kwargs = {"json": body} if body is not None else {}
            assert await refused(gil.request(method, path, **kwargs)) == (404, "not_found")
        # Ada, admin of Acme, cannot reach Gil through her own organisation's URLs either.
        for method, path, body in (
            ("PATCH", f"/orgs/{acme}/members/{p['gil_id']}", {"role": "member"}),
            ("DELETE", f"/orgs/{acme}/members/{p['gil_id']}", None),
        ):
            kwargs = {"json": body} if body is not None else {}
            assert await refused(ada.request(method, path, **kwargs)) == (404, "not_found")
        assert (await gil.request("GET", f"/orgs/{globex}"))["members"] == 1
        # Roles: Bob becomes an admin and back; the last admin cannot step down or leave.
        promoted = await ada.request(
            "PATCH", f"/orgs/{acme}/members/{p['bob_id']}", json={"role": "admin"}
        )
        assert promoted["role"] == "admin"
        await bob.request("PATCH", f"/orgs/{acme}/members/{p['bob_id']}", json={"role": "member"})
        assert await refused(
            ada.request("PATCH", f"/orgs/{acme}/members/{p['ada_id']}", json={"role": "member"})
        ) == (409, "last_admin")
        assert await refused(ada.request("DELETE", f"/orgs/{acme}/members/{p['ada_id']}")) == (
            409, "last_admin",
        )  # fmt: skip
        assert await refused(
            ada.request("PATCH", f"/orgs/{acme}/members/{p['bob_id']}", json={"role": "owner"})
        ) == (422, "validation_error")
        entries = await services.audit.entries(user_id=p["ada_id"])
        changes = [(e.action, e.detail.get("member"), e.detail.get("role")) for e in entries]
        assert ("org_role_changed", p["bob_id"], "admin") in changes
        by_bob = await services.audit.entries(user_id=p["bob_id"])
        assert next(e for e in by_bob if e.action == "org_role_changed").detail["by"] == p["bob_id"]


@pytest.mark.slow  # the member's socket is closed
async def test_removal_ends_sessions_and_sockets_at_once_and_keeps_the_member_out(
    tmp_path: Path,
) -> None:
    async with two_orgs(tmp_path, socket=True) as (url, services, p):
        ada, bob, acme = p["ada"], p["bob"], p["acme"]
        await bob.request("GET", "/me")  # cached for the session cache's lifetime
        async with bob.connect() as socket:
            await ada.request("DELETE", f"/orgs/{acme}/members/{p['bob_id']}")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(socket.receive(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert await refused(bob.request("GET", "/me")) == (401, "session_revoked")
        assert await refused(bob.refresh()) == (401, "session_revoked")
        async with AtollClient(url) as again:
            assert await refused(again.login("bob@acme.test", PASSWORD)) == (
                403, "removed_from_org",
            )  # fmt: skip
            assert await refused(again.login("bob@acme.test", "wrong password!")) == (
                401,
                "invalid_credentials",
            )  # fmt: skip: only the password's owner learns they were removed
        members = await ada.request("GET", f"/orgs/{acme}/members")
        assert [m["email"] for m in members["items"]] == ["ada@acme.test", "cy@acme.test"]
        gone = await ada.request("GET", f"/orgs/{acme}/members", params={"removed": "true"})
        assert [(m["email"], m["removed_at"] is not None) for m in gone["items"]] == [
            ("bob@acme.test", True)
        ]
        restored = await ada.request("POST", f"/orgs/{acme}/members/{p['bob_id']}/restore")
        assert (restored["role"], restored["removed_at"]) == ("member", None)
        async with AtollClient(url) as again:
            await again.login("bob@acme.test", PASSWORD)
            assert (await again.request("GET", "/me"))["org"]["id"] == acme
        actions = [
            (e.action, e.detail.get("member"), e.detail.get("by"))
            for e in await services.audit.entries(user_id=p["ada_id"])
        ]
        assert ("org_member_removed", p["bob_id"], p["ada_id"]) in actions
        assert ("org_member_restored", p["bob_id"], p["ada_id"]) in actions
        refusals = await services.audit.entries(user_id=p["bob_id"])
        assert "login_refused_removed" in [e.action for e in refusals]


async def test_members_are_paged_by_email_without_repeats(tmp_path: Path) -> None:
    async with two_orgs(tmp_path) as (_, services, p):
        ada, acme = p["ada"], p["acme"]
        for index in range(120):
            user = await services.auth.create_user(f"m{index:03}@acme.test", PASSWORD)
            await join(services, user.id, acme)
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 50, **({"cursor": cursor} if cursor else {})}
            page = await ada.request("GET", f"/orgs/{acme}/members", params=params)
            seen += [m["email"] for m in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 123 and seen == sorted(seen) and len(set(seen)) == 123
        assert await refused(
            ada.request("GET", f"/orgs/{acme}/members", params={"cursor": "!!"})
        ) == (422, "validation_error")
        assert await refused(
            ada.request("GET", f"/orgs/{acme}/members", params={"limit": 1000})
        ) == (422, "validation_error")


async def test_an_admin_requires_sso_only_with_an_identity_provider_linked(
    tmp_path: Path,
) -> None:
    async with two_orgs(tmp_path) as (app, services, p):
        ada, acme = p["ada"], p["acme"]
        body = {"sso_required": True}
        assert await refused(ada.request("PATCH", f"/orgs/{acme}", json=body)) == (
            409,
            "last_sign_in",
        )  # fmt: skip: her own password would stop working and nothing else signs her in
        identity = Identity(
            user_id=p["ada_id"], provider="acme", issuer="https://id.acme.test",
            subject="ada", email="ada@acme.test", created_at=utcnow(), last_used_at=utcnow(),
        )  # fmt: skip
        await services.db.write(lambda session: session.add(identity))
        org = await ada.request("PATCH", f"/orgs/{acme}", json=body)
        assert org["sso_required"] is True
        async with client_of(app) as stranger:
            assert await refused(stranger.login("cy@acme.test", PASSWORD)) == (
                403, "sso_required",
            )  # fmt: skip
        changed = [e for e in await services.audit.entries(user_id=p["ada_id"])
                   if e.action == "org_sso_changed"]  # fmt: skip
        assert changed and changed[0].detail["sso_required"] is True


async def link_identity(services: Services, user_id: str, provider: str, subject: str) -> None:
    """Arrange what a sign-in through ``provider`` leaves behind: a linked identity."""
    identity = Identity(
        user_id=user_id, provider=provider, issuer=f"https://{provider}.example",
        subject=subject, email=None, created_at=utcnow(), last_used_at=utcnow(),
    )  # fmt: skip
    await services.db.write(lambda session: session.add(identity))


async def test_requiring_sso_ends_the_password_sessions_and_their_sockets(
    tmp_path: Path,
) -> None:
    """F7: passwords refused from now on, and the password sessions that exist end at once
    (refresh answers 401, sockets close with 4401); another organisation's go on."""
    async with two_orgs(tmp_path, socket=True) as (url, services, p):
        ada, bob, gil, acme = p["ada"], p["bob"], p["gil"], p["acme"]
        await link_identity(services, p["ada_id"], "acme", "ada")
        await bob.request("GET", "/me")  # cached for the session cache's lifetime
        async with bob.connect() as socket:
            org = await ada.request("PATCH", f"/orgs/{acme}", json={"sso_required": True})
            assert org["sso_required"] is True
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(socket.receive(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert await refused(bob.request("GET", "/me")) == (401, "session_revoked")
        assert await refused(bob.refresh()) == (401, "session_revoked")
        assert await refused(ada.refresh()) == (401, "session_revoked")  # hers was a password too
        assert (await gil.request("GET", "/me"))["email"] == "gil@globex.test"
        changed = [e for e in await services.audit.entries(user_id=p["ada_id"])
                   if e.action == "org_sso_changed"]  # fmt: skip
        assert changed[0].detail["sessions"] == 3
        async with AtollClient(url) as again:
            assert await refused(again.login("bob@acme.test", PASSWORD)) == (
                403, "sso_required",
            )  # fmt: skip
        refusal = next(
            e for e in await services.audit.entries(user_id=p["bob_id"])
            if e.action == "login_refused_sso"
        )  # fmt: skip
        assert refusal.detail["email"] == "bob@acme.test"


async def test_an_admin_binds_the_organisation_to_its_providers(tmp_path: Path) -> None:
    """Over REST: only configured providers, never one that would lock the admin out."""
    nowhere = f"http://127.0.0.1:{free_port()}"  # configured, never reached here
    providers = [
        {"name": name, "display_name": name, "issuer": f"{nowhere}/{name}",
         "client_id": "atoll", "client_secret": "secret"}
        for name in ("acme", "social")
    ]  # fmt: skip
    async with two_orgs(tmp_path, oidc_providers=providers) as (_, services, p):
        ada, acme = p["ada"], p["acme"]
        assert (await ada.request("GET", f"/orgs/{acme}"))["providers"] == []
        assert await refused(
            ada.request("PATCH", f"/orgs/{acme}", json={"providers": ["nope"]})
        ) == (422, "validation_error")
        await link_identity(services, p["ada_id"], "social", "ada")
        body = {"providers": ["acme"], "sso_required": True}
        assert await refused(ada.request("PATCH", f"/orgs/{acme}", json=body)) == (
            409,
            "last_sign_in",
        )  # fmt: skip: only her "social" identity would be left, and it is not allowed
        await link_identity(services, p["ada_id"], "acme", "ada")
        assert await services.orgs.providers(acme) == []  # the refused change changed nothing
        org = await ada.request("PATCH", f"/orgs/{acme}", json=body)
        assert (org["providers"], org["sso_required"]) == (["acme"], True)
        assert await services.orgs.providers(acme) == ["acme"]
