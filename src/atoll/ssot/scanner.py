"""``atoll ssot scan``: find the files, collect their facts (in parallel, cached), apply
the rules, compare with the baseline, and report."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.ssot.config import SsotConfig
from atoll.ssot.facts import FileFacts, collect
from atoll.ssot.rules import Finding, RuleEngine, import_metrics

TOOL_VERSION = "1"
SKIP_DIRS = frozenset(
    {
        ".git",
        ".venv",
        "venv",
        "node_modules",
        "__pycache__",
        ".ssot-cache",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        "build",
        "dist",
    }
)


@dataclass
class ScanResult:
    """Findings (all, and those new against the baseline) and metrics of one scan."""

    findings: list[Finding]
    new: list[Finding]
    metrics: dict[str, Any]
    files: int
    syntax_errors: list[tuple[str, str]]
    duration: float


def discover(config: SsotConfig, paths: list[str] | None = None) -> list[Path]:
    """The ``.py`` files under the configured (or given) paths, less the excluded ones."""
    files: list[Path] = []
    for entry in paths or list(config.paths):
        base = (config.root / entry).resolve()
        if base.is_file():
            candidates = [base] if base.suffix == ".py" else []
        else:
            candidates = []
            for directory, subdirs, names in os.walk(base):
                subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
                candidates += [Path(directory) / n for n in sorted(names) if n.endswith(".py")]
        for path in candidates:
            relative = _relative(path, config.root)
            if not any(fnmatch.fnmatch(relative, pattern) for pattern in config.exclude):
                files.append(path)
    return sorted(set(files))


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _collect_one(job: tuple[str, str]) -> dict[str, Any]:
    path, relative = job
    source = Path(path).read_text(encoding="utf-8", errors="replace")
    return collect(Path(path), relative, source).to_dict()


class FactCache:
    """Facts per file, keyed by content hash + configuration + tool version."""

    def __init__(self, directory: Path | None, config_key: str) -> None:
        self.directory = directory
        self.config_key = config_key

    def key(self, content: bytes) -> str:
        digest = hashlib.sha256(content)
        digest.update(f"|{self.config_key}|{TOOL_VERSION}".encode())
        return digest.hexdigest()

    def get(self, key: str) -> FileFacts | None:
        if self.directory is None:
            return None
        path = self.directory / f"{key}.json"
        try:
            return FileFacts.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, facts: FileFacts) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.directory / f"{key}.tmp"
        temporary.write_text(json.dumps(facts.to_dict()), encoding="utf-8")
        temporary.replace(self.directory / f"{key}.json")


def collect_all(
    config: SsotConfig, files: list[Path], *, jobs: int, cache: FactCache
) -> list[FileFacts]:
    """Facts of every file: from the cache, else parsed (in ``jobs`` processes)."""
    results: dict[Path, FileFacts] = {}
    pending: list[tuple[Path, str]] = []
    for path in files:
        key = cache.key(path.read_bytes())
        cached = cache.get(key)
        if cached is not None and cached.path == _relative(path, config.root):
            results[path] = cached
        else:
            pending.append((path, key))
    work = [(str(p), _relative(p, config.root)) for p, _ in pending]
    if jobs > 1 and len(work) > 32:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            collected = list(pool.map(_collect_one, work, chunksize=16))
    else:
        collected = [_collect_one(item) for item in work]
    for (path, key), data in zip(pending, collected, strict=True):
        facts = FileFacts.from_dict(data)
        cache.put(key, facts)
        results[path] = facts
    return [results[p] for p in files]


def fingerprints(findings: list[Finding]) -> list[str]:
    """The baseline identity of each finding (occurrence-indexed, line-independent)."""
    seen: dict[tuple[str, str, str, str], int] = {}
    prints = []
    for finding in findings:
        identity = (finding.rule, finding.file, finding.symbol, finding.scope)
        occurrence = seen.get(identity, 0)
        seen[identity] = occurrence + 1
        prints.append(finding.fingerprint(occurrence))
    return prints


def scan(
    config: SsotConfig,
    paths: list[str] | None = None,
    *,
    jobs: int | None = None,
    use_cache: bool = True,
    baseline: set[str] | None = None,
) -> ScanResult:
    """Scan the project and compare with ``baseline`` (fingerprints) when given."""
    started = time.perf_counter()
    files = discover(config, paths)
    cache_dir = config.root / ".ssot-cache" if use_cache else None
    cache = FactCache(cache_dir, config.fingerprint())
    facts = collect_all(config, files, jobs=jobs or (os.cpu_count() or 1), cache=cache)
    findings = RuleEngine(config, facts).run()
    prints = fingerprints(findings)
    new = [f for f, p in zip(findings, prints, strict=True) if not baseline or p not in baseline]
    return ScanResult(
        findings=findings,
        new=new,
        metrics=import_metrics(config, facts),
        files=len(files),
        syntax_errors=[(f.path, f.syntax_error) for f in facts if f.syntax_error],
        duration=time.perf_counter() - started,
    )
