"""The ``atoll`` command line."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path


class _Version(argparse.Action):
    """``--version``: the installed version, read (package metadata) only when asked."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from atoll import __version__

        print(f"atoll {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``atoll``."""
    parser = argparse.ArgumentParser(prog="atoll", description="Multi-tenant AI-agent runtime.")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server (SQLite and everything in-process)")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--data-dir", type=Path, help="SQLite file and keys (default ./atoll-data)")

    worker = commands.add_parser(
        "worker",
        help="execute queued runs (scale-out: needs ATOLL_REDIS_URL and ATOLL_DATABASE_URL)",
    )
    worker.add_argument("--data-dir", type=Path, help="keys and defaults (default ./atoll-data)")
    worker.add_argument("--concurrency", type=int, dest="worker_concurrency",
                        help="runs executed at once (default 16)")  # fmt: skip
    worker.add_argument("--worker-id", help="this worker's name (default: host-pid-random)")

    chat = commands.add_parser("chat", help="chat with an agent in the terminal")
    chat.add_argument("--url", default=os.environ.get("ATOLL_URL", "http://127.0.0.1:8000"))
    chat.add_argument("--email", default=os.environ.get("ATOLL_EMAIL"))
    chat.add_argument("--agent", help="agent to talk to (default: the server's)")
    chat.add_argument("--thread", help="continue this thread id")
    chat.add_argument("--once", metavar="QUESTION", help="ask once, print the answer, exit")
    chat.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )

    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="user_command", metavar="ACTION", required=True
    )
    create = user.add_parser("create", help="create a user")
    create.add_argument("email")
    create.add_argument("--name")
    create.add_argument("--plan", help="their plan outside an organisation (default: the default)")
    create.add_argument("--role", action="append", default=[], dest="roles")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    create.add_argument("--data-dir", type=Path)

    org = commands.add_parser("org", help="manage organisations (operators)").add_subparsers(
        dest="org_command", metavar="ACTION", required=True
    )
    org_create = org.add_parser("create", help="create an organisation; prints its id")
    org_create.add_argument("name")
    org_create.add_argument("--plan", help="default: the default plan")
    org_domain = org.add_parser("add-domain", help="give an email domain to an organisation")
    org_domain.add_argument("org_id")
    org_domain.add_argument("domain")
    org_plan = org.add_parser("set-plan", help="change an organisation's plan")
    org_plan.add_argument("org_id")
    org_plan.add_argument("plan")
    org_sso = org.add_parser(
        "require-sso",
        help="refuse passwords for the organisation's people (ends their password sessions)",
    )
    org_sso.add_argument("org_id")
    org_sso.add_argument("required", choices=["on", "off"])
    org_providers = org.add_parser(
        "set-providers",
        help="bind the organisation to these OpenID Providers (none: any configured one); "
        "ends sessions from the others",
    )
    org_providers.add_argument("org_id")
    org_providers.add_argument("providers", nargs="*", metavar="PROVIDER")
    org_members = org.add_parser("members", help="list an organisation's members")
    org_members.add_argument("org_id")
    org_members.add_argument("--removed", action="store_true", help="those removed instead")
    org_role = org.add_parser("set-role", help="make a member an admin, or a member again")
    org_role.add_argument("org_id")
    org_role.add_argument("email")
    org_role.add_argument("role", choices=["admin", "member"])
    org_remove = org.add_parser(
        "remove", help="remove a member: end their sessions, keep them out until restored"
    )
    org_remove.add_argument("org_id")
    org_remove.add_argument("email")
    org_restore = org.add_parser("restore", help="let a removed member sign in again")
    org_restore.add_argument("org_id")
    org_restore.add_argument("email")
    org_actions = (org_create, org_domain, org_plan, org_sso, org_providers, org_members,
                   org_role, org_remove, org_restore)  # fmt: skip
    for action in org_actions:
        action.add_argument("--data-dir", type=Path)

    commands.add_parser("ssot", help="the SSOT toolkit: atoll ssot scan … (see atoll ssot -h)")
    db = commands.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_command", metavar="ACTION", required=True
    )
    upgrade = db.add_parser("upgrade", help="apply database migrations; says which")
    current = db.add_parser("current", help="the database's schema revision")
    history = db.add_parser("history", help="every schema revision this Atoll knows")
    for action in (upgrade, current, history):
        action.add_argument("--data-dir", type=Path)
    return parser


def _settings(args: argparse.Namespace) -> object:
    """The settings (``ConfigurationError`` with pydantic's words for a bad one: printed as
    one clear message, not a traceback)."""
    from pydantic import ValidationError

    from atoll.config import Settings
    from atoll.errors import ConfigurationError

    overrides: dict[str, object] = {}
    for name in ("host", "port", "data_dir", "worker_concurrency", "worker_id"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {problems}") from None


def _worker(args: argparse.Namespace) -> int:
    from atoll.config import Settings
    from atoll.server.serve import run_worker

    settings = _settings(args)
    assert isinstance(settings, Settings)
    run_worker(settings)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from atoll.config import Settings
    from atoll.server.serve import serve

    settings = _settings(args)
    assert isinstance(settings, Settings)
    # Migrated (or refused: a newer Atoll's database) before uvicorn starts, so that a
    # refusal is one line and exit status 2, not a failed start-up's traceback.
    for line in asyncio.run(_upgrade_database(settings)):
        if not line.startswith("already"):
            print(f"atoll: {line}", file=sys.stderr)
    serve(settings)
    return 0


async def _create_user(args: argparse.Namespace, password: str) -> str:
    from atoll.config import Settings
    from atoll.server.services import running_operator

    settings = _settings(args)
    assert isinstance(settings, Settings)
    async with running_operator(settings) as services:
        if args.plan is not None:
            services.org_admin.check_plan(args.plan)
        user = await services.auth.create_user(
            args.email, password, name=args.name, plan=args.plan, roles=frozenset(args.roles)
        )
    return user.id


def _user_create(args: argparse.Namespace) -> int:
    from atoll.errors import AtollError

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat: ") != password:
            print("atoll: passwords differ", file=sys.stderr)
            return 2
    try:
        user_id = asyncio.run(_create_user(args, password))
    except AtollError as exc:
        print(f"atoll: {exc.message}", file=sys.stderr)
        return 1
    print(user_id)
    return 0


def _chat(args: argparse.Namespace) -> int:
    from atoll.terminal import PASSWORD_TRIES, read_password, run_chat

    prompted = not args.password_stdin and not os.environ.get("ATOLL_PASSWORD")
    try:
        return asyncio.run(
            run_chat(
                url=args.url,
                email=args.email or (lambda: input("Email: ")),
                password=lambda: read_password(args.password_stdin),
                agent=args.agent,
                thread=args.thread,
                once=args.once,
                password_tries=PASSWORD_TRIES if prompted else 1,
            )
        )
    except KeyboardInterrupt:
        return 130


async def _org_action(args: argparse.Namespace) -> list[str]:
    from atoll.config import Settings
    from atoll.server.services import running_operator

    settings = _settings(args)
    assert isinstance(settings, Settings)
    async with running_operator(settings) as services:
        admin, orgs = services.org_admin, services.orgs
        if args.org_command == "create":
            return [(await admin.create(args.name, args.plan)).id]
        if args.org_command == "add-domain":
            domain, _ = await admin.add_domain(args.org_id, args.domain, by=None)
            return [domain]
        if args.org_command == "set-plan":
            previous = await admin.set_plan(args.org_id, args.plan, by=None)
            return [f"{previous} -> {args.plan}"]
        if args.org_command == "require-sso":
            ended = len(await admin.require_sso(args.org_id, args.required == "on", by=None))
            return [f"sso required: {args.required}; {ended} session(s) ended"]
        if args.org_command == "set-providers":
            ended = len(await admin.set_providers(args.org_id, args.providers, by=None))
            bound = ", ".join(sorted(set(args.providers))) or "any configured provider"
            return [f"providers: {bound}; {ended} session(s) ended"]
        if args.org_command == "members":
            rows = await orgs.members(args.org_id, removed=args.removed)
            return [f"{row.email}\t{row.role}" for row in rows]
        user_id = await orgs.member_id(args.org_id, args.email)
        if args.org_command == "set-role":
            previous = await admin.set_role(args.org_id, user_id, args.role, by=None)
            return [f"{args.email}: {previous} -> {args.role}"]
        if args.org_command == "restore":
            await admin.restore(args.org_id, user_id, by=None)
            return [f"restored {args.email}"]
        ended = await admin.remove(args.org_id, user_id, by=None)
        return [f"removed {args.email}; {ended} session(s) ended"]


def _org(args: argparse.Namespace) -> int:
    from atoll.errors import AtollError

    try:
        lines = asyncio.run(_org_action(args))
    except AtollError as exc:
        print(f"atoll: {exc.message}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


def _upgrade_lines(before: str | None, after: str, applied: Sequence[str]) -> list[str]:
    """What ``atoll db upgrade`` (and ``atoll serve``, when it migrates) says it did."""
    if not applied:
        return [f"already at {after}"]
    from atoll.store.db import migrations

    described = {m.revision: m.description for m in migrations()}
    return [
        f"applied {before or '(empty)'} → {after}",
        *(f"  {revision}  {described[revision]}" for revision in applied),
    ]


async def _upgrade_database(settings: object) -> list[str]:
    from atoll.config import Settings
    from atoll.server.services import database_of

    assert isinstance(settings, Settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = database_of(settings)
    try:
        done = await db.upgrade()
    finally:
        await db.dispose()
    return _upgrade_lines(done.before, done.after, done.applied)


async def _current_revision(settings: object) -> str | None:
    """The database's revision; None for an empty one (or no SQLite file yet: not made)."""
    from atoll.config import Settings
    from atoll.server.services import database_of
    from atoll.store.db import SQLITE_FILE

    assert isinstance(settings, Settings)
    if settings.database_url is None and not (settings.data_dir / SQLITE_FILE).exists():
        return None
    db = database_of(settings)
    try:
        return await db.revision()
    finally:
        await db.dispose()


def _db_current(revision: str | None) -> list[str]:
    from atoll.store.db import check_known, head_revision

    check_known(revision)
    head = head_revision()
    if revision is None:
        return [f"none (an empty database; `atoll db upgrade` applies up to {head})"]
    if revision == head:
        return [f"{revision} (the newest this Atoll knows)"]
    return [f"{revision} (behind: this Atoll knows up to {head}; run `atoll db upgrade`)"]


def _db_history(revision: str | None) -> list[str]:
    from atoll.store.db import check_known, migrations

    lines = [
        f"{m.revision}  {m.description}{'  (current)' if m.revision == revision else ''}"
        for m in migrations()
    ]
    for line in lines:
        print(line)
    check_known(revision)  # after the list: what this Atoll knows is still worth seeing
    return []


def _db(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.db_command == "upgrade":
        lines = asyncio.run(_upgrade_database(settings))
    elif args.db_command == "current":
        lines = _db_current(asyncio.run(_current_revision(settings)))
    else:
        lines = _db_history(asyncio.run(_current_revision(settings)))
    for line in lines:
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``atoll`` console script."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["ssot"]:
        from atoll.ssot.cli import main as ssot_main

        return ssot_main(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    from atoll.errors import ConfigurationError

    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "worker":
            return _worker(args)
        if args.command == "chat":
            return _chat(args)
        if args.command == "user":
            return _user_create(args)
        if args.command == "org":
            return _org(args)
        if args.command == "db":
            return _db(args)
    except ConfigurationError as exc:
        print(f"atoll: {exc.message}", file=sys.stderr)
        return 2
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
