"""Schemathesis against a live Atoll: every check, status-code conformance included.

Used by the test suite (a small fixed-seed budget) and ``bench/adversarial.py``
(the big run). ``/auth/logout`` is left out: it would revoke the token the run
authenticates with; it is covered by the end-to-end tests. Generated strings hold no
U+0000 (``schemathesis.toml``): every door refuses it (422), which JSON Schema cannot
say; refused text is the subject of its own generated test (tests/e2e/test_conformance.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CONFIG = Path(__file__).with_name("schemathesis.toml")
"""What Atoll refuses that JSON Schema cannot say (U+0000), and the statuses of refusals."""
SUMMARY = r"(\d+) generated, (?:(\d+) found \d+ unique failures?|(\d+) passed)"


@dataclass(frozen=True)
class Conformance:
    """What one schemathesis run found."""

    returncode: int
    generated: int
    passed: int
    failures: int
    output: str

    @property
    def ok(self) -> bool:
        """No failure of any check, and something was tested."""
        return self.returncode == 0 and self.failures == 0 and self.generated > 0


def schemathesis_binary() -> str:
    """The ``st`` command next to this Python (the test venv's)."""
    beside = Path(sys.executable).with_name("st")
    found = str(beside) if beside.exists() else shutil.which("st")
    if found is None:
        raise RuntimeError("schemathesis is not installed (pip install -e '.[dev]')")
    return found


def run_schemathesis(
    base_url: str, token: str, *, examples: int, seed: int, workers: int = 2, timeout: float = 900
) -> Conformance:
    """Run every schemathesis check against ``base_url`` as the user of ``token``."""
    command = [
        schemathesis_binary(),
        "--config-file",
        str(CONFIG),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(examples),
        "--seed",
        str(seed),
        "--workers",
        str(workers),
        "--header",
        f"Authorization: Bearer {token}",
        "--exclude-path",
        "/api/v1/auth/logout",
        "--no-color",
    ]
    done = subprocess.run(  # noqa: S603 - our own fixed command line
        command, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    summary = re.search(
        r"(\d+) generated, (?:(\d+) found \d+ unique failures|(\d+) passed)", output
    )
    generated = int(summary.group(1)) if summary else 0
    failures = int(summary.group(2)) if summary and summary.group(2) else 0
    passed = int(summary.group(3)) if summary and summary.group(3) else generated - failures
    return Conformance(done.returncode, generated, passed, failures, output)
