"""``atoll ssot …`` — exit 0: no new error-severity findings; 1: new findings; 2: usage or
configuration error (one clear line, never a traceback)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from atoll.ssot.config import ConfigError, SsotConfig, load_config
from atoll.ssot.report import as_json, as_sarif, as_text
from atoll.ssot.scanner import fingerprints, scan


def build_ssot_parser() -> argparse.ArgumentParser:
    """The ``atoll ssot`` parser."""
    parser = argparse.ArgumentParser(prog="atoll ssot", description="Keep a codebase SSOT.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    scan_parser = commands.add_parser("scan", help="find SSOT violations")
    scan_parser.add_argument("paths", nargs="*", help="files or directories (default: config)")
    scan_parser.add_argument("--root", type=Path, default=Path.cwd(), help="project root")
    scan_parser.add_argument(
        "--fail-on",
        choices=["error", "warning"],
        default="error",
        help="exit 1 on a new finding of this severity or worse (default: error)",
    )
    scan_parser.add_argument("--format", choices=["text", "json", "sarif"], default="text")
    scan_parser.add_argument("--output", type=Path, help="write the report here")
    scan_parser.add_argument("--baseline", type=Path, help="only findings not in it count")
    scan_parser.add_argument(
        "--write-baseline",
        action="store_true",
        help="rewrite the baseline (pruned to what still occurs)",
    )
    scan_parser.add_argument("--jobs", type=int, help="parallel processes (default: CPUs)")
    scan_parser.add_argument("--no-cache", action="store_true", help="ignore .ssot-cache")

    migrate_parser = commands.add_parser("migrate", help="rewrite imports (SSOT002, SSOT003)")
    migrate_parser.add_argument("paths", nargs="*")
    migrate_parser.add_argument("--root", type=Path, default=Path.cwd())
    migrate_parser.add_argument(
        "--rule", default="SSOT002,SSOT003", help="comma-separated: SSOT002,SSOT003"
    )
    migrate_parser.add_argument("--dry-run", action="store_true", help="print diffs, write nothing")
    migrate_parser.add_argument(
        "--validate", choices=["syntax", "imports", "tests"], default="imports"
    )
    migrate_parser.add_argument("--test-cmd", help="the test command for --validate tests")

    rollback_parser = commands.add_parser("rollback", help="undo a migration")
    rollback_parser.add_argument("checkpoint", nargs="?")
    rollback_parser.add_argument("--last", action="store_true", help="the newest checkpoint")
    rollback_parser.add_argument("--force", action="store_true", help="overwrite conflicts")
    rollback_parser.add_argument("--root", type=Path, default=Path.cwd())

    checkpoints_parser = commands.add_parser("checkpoints", help="list migration checkpoints")
    checkpoints_parser.add_argument("--root", type=Path, default=Path.cwd())

    audit_parser = commands.add_parser("audit-tests", help="does pytest collect every test file?")
    audit_parser.add_argument("paths", nargs="*")
    audit_parser.add_argument("--root", type=Path, default=Path.cwd())
    audit_parser.add_argument("--json", action="store_true")
    audit_parser.add_argument(
        "--python", help="the project's interpreter (default: the one running atoll)"
    )
    audit_parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds for the collection (default 300)"
    )
    return parser


def run_migrate(args: argparse.Namespace) -> int:
    """``atoll ssot migrate``."""
    from atoll.ssot.migrate import migrate  # LibCST loads only when migrating

    config = load_config(args.root.resolve())
    rules = {r.strip() for r in args.rule.split(",") if r.strip()}
    if not rules or not rules <= {"SSOT002", "SSOT003"}:
        raise ConfigError("--rule takes SSOT002 and/or SSOT003 (the rules with a fix)")
    report = migrate(
        config,
        args.paths or None,
        rules=rules,
        dry_run=args.dry_run,
        validate=args.validate,
        test_command=args.test_cmd,
    )
    for path, reason in sorted(report.refused.items()):
        print(f"atoll ssot: {path}: not rewritten — {reason}", file=sys.stderr)
    for line in report.manual:
        print(f"atoll ssot: {line}", file=sys.stderr)
    if args.dry_run:
        print("".join(report.diffs), end="")
        print(f"{len(report.diffs)} file(s) would change", file=sys.stderr)
        return 1 if report.refused else 0
    for path, changes in sorted(report.changed.items()):
        print(f"{path}: " + "; ".join(changes))
    for path, reason in sorted(report.restored.items()):
        print(f"{path}: restored — {reason}")
    if report.checkpoint:
        print(f"checkpoint {report.checkpoint} (undo: atoll ssot rollback --last)")
    print(f"{len(report.changed)} file(s) changed", file=sys.stderr)
    return 1 if report.restored or report.refused else 0


def run_rollback(args: argparse.Namespace) -> int:
    """``atoll ssot rollback``."""
    from atoll.ssot.migrate import rollback

    if args.checkpoint is None and not args.last:
        raise ConfigError("name a checkpoint or pass --last")
    config = load_config(args.root.resolve())
    report = rollback(config, args.checkpoint, force=args.force)
    for path in report.restored:
        print(f"restored {path}")
    for path in report.conflicts:
        print(f"conflict {path}: changed since the migration; left alone (--force overwrites)")
    for path in report.unverified:
        print(f"unverified {path}: restored bytes do not match the recorded SHA-256")
    return 1 if report.conflicts or report.unverified else 0


def run_checkpoints(args: argparse.Namespace) -> int:
    """``atoll ssot checkpoints``."""
    from atoll.ssot.migrate import list_checkpoints

    manifests = list_checkpoints(load_config(args.root.resolve()))
    for manifest in manifests:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(manifest["created"]))
        print(
            f"{manifest['id']}  {created}  {len(manifest['files'])} file(s)  "
            f"{','.join(manifest['rules'])}"
        )
    if not manifests:
        print("no checkpoints")
    return 0


def run_audit(args: argparse.Namespace) -> int:
    """``atoll ssot audit-tests``."""
    from atoll.ssot.audit import audit_tests

    root = args.root.resolve()
    if not root.is_dir():
        raise ConfigError(f"--root {args.root}: no such directory")
    result = audit_tests(root, args.paths or ["."], python=args.python, timeout=args.timeout)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(
            f"{result.test_files} test file(s); {result.collected_files} collected; "
            f"{result.tests_collected} test(s); pytest exit {result.exit_status}"
        )
        for failure in result.failures:
            print(f"{failure.file}: {failure.category}: {failure.first_error}")
    return 1 if result.failures else 0


def _baseline_path(args: argparse.Namespace, config: SsotConfig) -> Path | None:
    if args.baseline is not None:
        given: Path = args.baseline
        return given if given.is_absolute() else config.root / given
    return config.root / config.baseline if config.baseline else None


def _read_baseline(path: Path | None) -> set[str] | None:
    if path is None or not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return set(data["fingerprints"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"baseline {path} is not a baseline file ({exc})") from None


def run_scan(args: argparse.Namespace) -> int:
    """``atoll ssot scan``."""
    config = load_config(args.root.resolve())
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    baseline_path = _baseline_path(args, config)
    baseline = _read_baseline(baseline_path)
    result = scan(
        config,
        args.paths or None,
        jobs=args.jobs,
        use_cache=not args.no_cache,
        baseline=None if args.write_baseline else baseline,
    )
    if args.write_baseline:
        if baseline_path is None:
            raise ConfigError("--write-baseline needs --baseline FILE or `baseline` in the config")
        current = fingerprints(result.findings)
        kept = sorted(p for p in current if baseline is None or p in baseline)
        baseline_path.write_text(
            json.dumps({"version": 1, "fingerprints": kept}, indent=2) + "\n", encoding="utf-8"
        )
        print(f"baseline {baseline_path}: {len(kept)} fingerprint(s)", file=sys.stderr)
        return 0
    rendered = {"text": as_text, "json": as_json, "sarif": as_sarif}[args.format](result)
    if args.output is not None:
        args.output.write_text(rendered + "\n", encoding="utf-8")
    else:
        print(rendered)
    failing = ("error",) if args.fail_on == "error" else ("error", "warning")
    return 1 if any(f.severity in failing for f in result.new) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``atoll ssot``."""
    parser = build_ssot_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) and 2
    try:
        commands = {
            "scan": run_scan,
            "migrate": run_migrate,
            "rollback": run_rollback,
            "checkpoints": run_checkpoints,
            "audit-tests": run_audit,
        }
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"atoll ssot: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"atoll ssot: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr
        )
        return 2
