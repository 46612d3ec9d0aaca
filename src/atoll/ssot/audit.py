"""``atoll ssot audit-tests``: does pytest collect every test file?

Runs ``pytest --collect-only`` in a subprocess — with the project's interpreter when
given (``--python``), under a timeout — and reports the test files found, the files
and tests collected, and each failure with its category and first error line:
``syntax_error``, ``import_error`` (a module of the project), ``missing_dependency``
(a third-party module the interpreter does not have), ``other``; and for pytest
itself: ``pytest_error`` (it refused to run: a bad config, exit 3/4), ``internal_error``
(an INTERNALERROR, e.g. a test module calling ``sys.exit``), ``no_tests`` (test files,
none collected) and ``timeout``. Pytest's exit status is in the report.
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
    category: str  # see the module docstring
    first_error: str


@dataclass
class TestAudit:
    """The collection audit of one project."""

    test_files: int
    collected_files: int
    tests_collected: int
    failures: list[CollectionFailure] = field(default_factory=list)
    exit_status: int | None = None
    """Pytest's exit status (None: it did not finish)."""
    python: str = ""

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


_MISSING = re.compile(r"No module named '(?P<module>[^']+)'")


def _project_tops(root: Path) -> set[str]:
    """Top-level names the project itself provides (packages and modules in the root,
    in ``src/``)."""
    tops = set()
    for base in (root, root / "src"):
        if base.is_dir():
            for entry in base.iterdir():
                if (entry.is_dir() and (entry / "__init__.py").exists()) or entry.suffix == ".py":
                    tops.add(entry.stem if entry.suffix == ".py" else entry.name)
                elif entry.is_dir() and any(entry.glob("*.py")):
                    tops.add(entry.name)  # a namespace package
    return tops


def _category(lines: list[str], project: set[str]) -> tuple[str, str]:
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    first = errors[0] if errors else (lines[-1].strip() if lines else "unknown error")
    joined = "\n".join(errors)
    if "SyntaxError" in joined or "IndentationError" in joined:
        return "syntax_error", next((e for e in errors if "Error" in e), first)
    if "ImportError" in joined or "ModuleNotFoundError" in joined:
        line = next((e for e in errors if "Error" in e), first)
        missing = _MISSING.search(joined)
        if missing and missing.group("module").split(".")[0] not in project:
            return "missing_dependency", line
        return "import_error", line
    return "other", first


def audit_tests(
    root: Path, paths: list[str], *, python: str | None = None, timeout: float = 300.0
) -> TestAudit:
    """Collect the tests under ``paths`` with pytest in a subprocess and summarise."""
    interpreter = python or sys.executable
    command = [interpreter, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
               *paths]  # fmt: skip
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    test_files = len(find_test_files(root, paths or ["."]))
    try:
        result = subprocess.run(  # noqa: S603 - runs pytest on the operator's own project
            command, cwd=root, capture_output=True, text=True, check=False, env=env,
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        failure = CollectionFailure("<pytest>", "timeout", f"collection took over {timeout:g}s")
        return TestAudit(test_files, 0, 0, [failure], None, interpreter)
    except OSError as exc:
        failure = CollectionFailure("<pytest>", "pytest_error", f"cannot run {interpreter}: {exc}")
        return TestAudit(test_files, 0, 0, [failure], None, interpreter)
    lines = (result.stdout + "\n" + result.stderr).splitlines()
    project = _project_tops(root)
    collected_files: set[str] = set()
    tests = 0
    failures: list[CollectionFailure] = []
    current: str | None = None
    block: list[str] = []
    for line in lines:
        header = _ERROR_HEADER.match(line)
        if header or (current and (line.startswith("___") or line.startswith("==="))):
            if current is not None:
                failures.append(CollectionFailure(current, *_category(block, project)))
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
        failures.append(CollectionFailure(current, *_category(block, project)))
    failures += _pytest_failures(result.returncode, lines, failures, test_files, tests)
    return TestAudit(
        test_files=test_files,
        collected_files=len(collected_files),
        tests_collected=tests,
        failures=failures,
        exit_status=result.returncode,
        python=interpreter,
    )


def _pytest_failures(
    status: int, lines: list[str], parsed: list[CollectionFailure], files: int, tests: int
) -> list[CollectionFailure]:
    """What pytest's exit status and INTERNALERROR lines say beyond the per-file errors."""
    internal = [line.removeprefix("INTERNALERROR>").strip() for line in lines
                if line.startswith("INTERNALERROR>")]  # fmt: skip
    if internal:
        cause = next((x for x in reversed(internal) if x and not x.startswith("^")), internal[-1])
        return [CollectionFailure("<pytest>", "internal_error", cause)]
    if status in (0, 2) and (status == 0 or parsed):
        return []
    if status == 5:
        if files:
            return [CollectionFailure("<pytest>", "no_tests", "pytest collected no tests")]
        return []
    said = next(
        (line.strip() for line in lines if "error: " in line),  # argparse: the cause
        next(
            (line.strip() for line in lines if line.startswith("ERROR")),
            next((line.strip() for line in reversed(lines) if line.strip()), "no output"),
        ),
    )
    return [CollectionFailure("<pytest>", "pytest_error", f"pytest exited {status}: {said}")]
