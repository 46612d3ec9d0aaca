"""The ``atoll`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from atoll import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``atoll``."""
    parser = argparse.ArgumentParser(prog="atoll", description="Multi-tenant AI-agent runtime.")
    parser.add_argument("--version", action="version", version=f"atoll {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``atoll`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
