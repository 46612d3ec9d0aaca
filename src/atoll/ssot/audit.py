"""``atoll ssot audit-tests``: does pytest collect every test file?

Runs ``pytest --collect-only`` in a subprocess and reports the test files found,
the files and tests collected, and each file that failed to collect with its
category (syntax error, import error, other) and first error line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_ERROR_HEADER = re.compile(r"^_+ ERROR collecting (?P<path>\S+) _+$")
_TEST_ID = re.compile(r"^(?P<path>[^\s:]+\.py)::")


@dataclass
class CollectionFailure:
    """A test file pytest could not collect."""

    file: str
    category: str  # syntax_error | import_error | other
    first_error: str


@dataclass
class TestAudit:
    """The collection audit of one project."""

    test_files: int
    collected_files: int
    tests_collected: int
    failures: list[CollectionFailure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def find_test_files(root: Path, paths: list[str]) -> list[str]:
    """``test_*.py`` and ``*_test.py`` files under ``paths``."""
    found = set()
    for entry in paths:
        base = (root / entry).resolve()
        candidates = [base] if base.is_file() else list(base.rglob("*.py"))
        for path in candidates:
            is_test = path.name.startswith("test_") or path.name.endswith("_test.py")
            ignored = any(part in (".venv", "node_modules", ".git") for part in path.parts)
            if is_test and not ignored:
                found.add(path.relative_to(root.resolve()).as_posix())
    return sorted(found)


def _category(lines: list[str]) -> tuple[str, str]:
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    first = errors[0] if errors else (lines[-1].strip() if lines else "unknown error")
    joined = "\n".join(errors)
    if "SyntaxError" in joined or "IndentationError" in joined:
        return "syntax_error", next((e for e in errors if "Error" in e), first)
    if "ImportError" in joined or "ModuleNotFoundError" in joined:
        return "import_error", next((e for e in errors if "Error" in e), first)
    return "other", first


def audit_tests(root: Path, paths: list[str], *, python: str | None = None) -> TestAudit:
    """Collect the tests under ``paths`` with pytest in a subprocess and summarise."""
    command = [
        python or sys.executable,
        "-m",
        "pytest",
        "--collect-only",
        "-q",
        "-p",
        "no:cacheprovider",
        *paths,
    ]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(  # noqa: S603 - runs pytest on the operator's own project
        command, cwd=root, capture_output=True, text=True, check=False, env=env
    )
    lines = (result.stdout + "\n" + result.stderr).splitlines()
    collected_files: set[str] = set()
    tests = 0
    failures: list[CollectionFailure] = []
    current: str | None = None
    block: list[str] = []
    for line in lines:
        header = _ERROR_HEADER.match(line)
        if header or (current and (line.startswith("___") or line.startswith("==="))):
            if current is not None:
                failures.append(CollectionFailure(current, *_category(block)))
            current, block = (header.group("path"), []) if header else (None, [])
            continue
        if current is not None:
            block.append(line)
            continue
        test = _TEST_ID.match(line)
        if test:
            tests += 1
            collected_files.add(test.group("path"))
    if current is not None:
        failures.append(CollectionFailure(current, *_category(block)))
    return TestAudit(
        test_files=len(find_test_files(root, paths or ["."])),
        collected_files=len(collected_files),
        tests_collected=tests,
        failures=failures,
    )
