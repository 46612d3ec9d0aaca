"""``atoll ssot …`` — exit 0: no new error-severity findings; 1: new findings; 2: usage or
configuration error (one clear line, never a traceback)."""

from __future__ import annotations

import argparse
import json
import sys
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
    return parser


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
    return 1 if any(f.severity == "error" for f in result.new) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``atoll ssot``."""
    parser = build_ssot_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) and 2
    try:
        if args.command == "scan":
            return run_scan(args)
    except ConfigError as exc:
        print(f"atoll ssot: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"atoll ssot: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr
        )
        return 2
    return 2
