"""`atoll ssot scan` on large real codebases, cold and warm, beside ruff and pylint.

Trees: the standard library of the running interpreter, and Django (downloaded
from PyPI into a temp dir). For each: `atoll ssot scan` cold (no cache) and warm
(cache filled), `ruff check --select TID251` with a banned-api configuration
equivalent to the deprecated registry used for the scan, and
`pylint --disable=all --enable=duplicate-code` (the nearest tool to SSOT001),
each bounded in time; and `atoll ssot migrate --dry-run` with a `moved` registry that
matches few files (its time should follow the matches, not the tree: only files that
import a moved path are parsed with LibCST), cold and with the scan's cache. Prints JSON.

    python bench/ssot_scan.py [--trees stdlib,django] [--pylint-timeout 300] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

# For migrate: the same object under another path (json re-exports JSONDecodeError).
MOVED = {"json.decoder:JSONDecodeError": "json:JSONDecodeError"}
# A deprecated registry that is meaningful on both trees (old stdlib modules and names).
DEPRECATED = {
    "imp": "importlib",
    "optparse": "argparse",
    "asyncore": "asyncio",
    "distutils": "setuptools",
    "typing:List": "builtins:list",
    "typing:Dict": "builtins:dict",
}


def write_project(root: Path, paths: list[str]) -> None:
    lines = [
        "[tool.atoll.ssot]",
        f"paths = {json.dumps(paths)}",
        "",
        "[tool.atoll.ssot.deprecated]",
    ]
    lines += [f'"{old}" = "{new}"' for old, new in DEPRECATED.items()]
    lines += ["", "[tool.atoll.ssot.moved]"]
    lines += [f'"{old}" = "{new}"' for old, new in MOVED.items()]
    (root / "pyproject.toml").write_text("\n".join(lines) + "\n")
    banned = ["[lint.flake8-tidy-imports.banned-api]"]
    banned += [f'"{old.replace(":", ".")}".msg = "use {new}"' for old, new in DEPRECATED.items()]
    (root / "ruff.toml").write_text("\n".join(banned) + "\n")


def timed(command: list[str], cwd: Path, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                                timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"seconds": None, "timed_out_after_s": timeout}
    said = result.stderr.strip().splitlines()
    return {"seconds": round(time.perf_counter() - started, 3), "exit": result.returncode,
            "output_lines": len(result.stdout.splitlines()),
            "last_stderr_line": said[-1][:200] if said else ""}  # fmt: skip


def stdlib_tree(work: Path) -> Path:
    source = Path(sysconfig.get_paths()["stdlib"])
    target = work / "stdlib" / "Lib"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("site-packages", "__pycache__"))
    return work / "stdlib"


def django_tree(work: Path) -> Path | None:
    download = work / "download"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "-d", str(download), "django"], capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    wheels = list(download.glob("Django-*.whl")) + list(download.glob("django-*.whl"))
    if result.returncode != 0 or not wheels:
        return None
    target = work / "django"
    with zipfile.ZipFile(wheels[0]) as archive:
        archive.extractall(target)
    return target


def bench_tree(name: str, root: Path, pylint_timeout: float) -> dict[str, Any]:
    paths = [p.name for p in root.iterdir() if p.is_dir() and not p.name.endswith(".dist-info")]
    write_project(root, paths)
    files = sum(1 for p in paths for _ in (root / p).rglob("*.py"))
    atoll = [sys.executable, "-m", "atoll.cli", "ssot", "scan", "--format", "json"]
    shutil.rmtree(root / ".ssot-cache", ignore_errors=True)
    cold = timed([*atoll, "--output", str(root / "cold.json")], root, 600)
    warm = timed([*atoll, "--output", str(root / "warm.json")], root, 600)
    report = json.loads((root / "warm.json").read_text())
    migrate = [sys.executable, "-m", "atoll.cli", "ssot", "migrate", "--dry-run",
               "--rule", "SSOT002"]  # fmt: skip
    migrate_warm = timed(migrate, root, 600)
    shutil.rmtree(root / ".ssot-cache", ignore_errors=True)
    migrate_cold = timed(migrate, root, 600)
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    ruff_run = timed([ruff, "check", "--no-cache", "--select", "TID251", "--config",
                      str(root / "ruff.toml"), *paths], root, 600)  # fmt: skip
    pylint = [sys.executable, "-m", "pylint", "--disable=all", "--enable=duplicate-code",
              "--jobs=2", *paths]  # fmt: skip
    pylint_run = (
        timed(pylint, root, pylint_timeout)
        if _has_pylint()
        else {"skipped": "pylint not installed"}
    )
    return {
        "tree": name,
        "python_files": files,
        "atoll_ssot_cold": cold,
        "atoll_ssot_warm": warm,
        "atoll_findings": report["counts"],
        "atoll_migrate_dry_run_cold": migrate_cold,
        "atoll_migrate_dry_run_warm": migrate_warm,
        "ruff_tid251": ruff_run,
        "pylint_duplicate_code": pylint_run,
    }


def _has_pylint() -> bool:
    return subprocess.run([sys.executable, "-m", "pylint", "--version"], capture_output=True,
                          check=False).returncode == 0  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trees", default="stdlib,django")
    parser.add_argument("--pylint-timeout", type=float, default=300.0)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="atoll-ssot-bench-") as tmp:
        work = Path(tmp)
        for tree in args.trees.split(","):
            root = stdlib_tree(work) if tree == "stdlib" else django_tree(work)
            if root is None:
                results.append({"tree": tree, "skipped": "could not download"})
                continue
            results.append(bench_tree(tree, root, args.pylint_timeout))
    output = {"cpus": os.cpu_count(), "results": results}
    print(json.dumps(output, indent=2))
    if args.write:
        from report import write_section

        write_section("ssot-scan", "python " + " ".join(["bench/ssot_scan.py", *sys.argv[1:]]),
                      output)  # fmt: skip


if __name__ == "__main__":
    main()
