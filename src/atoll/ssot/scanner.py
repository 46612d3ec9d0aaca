"""``atoll ssot scan``: find the files, collect their facts (in parallel, cached), apply
the rules, compare with the baseline, and report."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.ssot.config import ConfigError, SsotConfig
from atoll.ssot.facts import FileFacts, collect, module_name
from atoll.ssot.rules import Finding, RuleEngine, import_metrics

TOOL_VERSION = "4"
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
        if not base.exists():
            raise ConfigError(f"{entry}: no such file or directory under {config.root}")
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
        return path.relative_to(root).as_posix()
    except ValueError:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return path.as_posix()


def _collect_one(job: tuple[str, str]) -> dict[str, Any]:
    path, relative = job
    # Bytes: the parser reads the encoding as Python does (a UTF-8 BOM, a PEP 263 cookie).
    return collect(Path(path), relative, Path(path).read_bytes()).to_dict()


class FactCache:
    """Facts per file in one JSON file, keyed by content hash + configuration + version."""

    def __init__(self, directory: Path | None, config_key: str) -> None:
        self.directory = directory
        self.config_key = config_key
        self._entries: dict[str, dict[str, Any]] | None = None
        self._dirty = False

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            self._entries = {}
            if self.directory is not None:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    stored = json.loads((self.directory / "facts.json").read_text("utf-8"))
                    if (stored.get("version"), stored.get("config")) == (
                        TOOL_VERSION,
                        self.config_key,
                    ):
                        self._entries = stored["files"]
        return self._entries

    def load_run(self, digest: str) -> dict[str, Any] | None:
        """The stored result of a scan of exactly these files and configuration."""
        if self.directory is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            stored = json.loads((self.directory / "run.json").read_text(encoding="utf-8"))
            if stored.get("digest") == digest:
                return dict(stored)
        return None

    def save_run(self, digest: str, result: dict[str, Any]) -> None:
        """Remember a scan's result for the next identical scan."""
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.directory / "run.json.tmp"
        temporary.write_text(json.dumps({**result, "digest": digest}), encoding="utf-8")
        temporary.replace(self.directory / "run.json")

    def key(self, content: bytes) -> str:
        """The cache key of a file's bytes."""
        return hashlib.sha256(content).hexdigest()

    def get(self, relative: str, key: str) -> FileFacts | None:
        """The cached facts of ``relative`` if its content is unchanged."""
        entry = self._load().get(relative)
        if entry is None or entry.get("key") != key:
            return None
        try:
            return FileFacts.from_dict(entry["facts"])
        except (KeyError, TypeError):
            return None

    def put(self, relative: str, key: str, facts: dict[str, Any]) -> None:
        """Remember a file's facts (as ``FileFacts.to_dict`` data); written by ``save``."""
        self._load()[relative] = {"key": key, "facts": facts}
        self._dirty = True

    def save(self, keep: set[str]) -> None:
        """Write the cache (only entries of files that still exist)."""
        if self.directory is None or not self._dirty:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        entries = {k: v for k, v in self._load().items() if k in keep}
        document = {"version": TOOL_VERSION, "config": self.config_key, "files": entries}
        temporary = self.directory / "facts.json.tmp"
        temporary.write_text(json.dumps(document, separators=(",", ":")), encoding="utf-8")
        temporary.replace(self.directory / "facts.json")


def file_keys(config: SsotConfig, files: list[Path], cache: FactCache) -> dict[Path, str]:
    """The cache key of every file's content."""
    return {path: cache.key(path.read_bytes()) for path in files}


def collect_all(
    config: SsotConfig,
    files: list[Path],
    *,
    jobs: int,
    cache: FactCache,
    keys: dict[Path, str] | None = None,
) -> list[FileFacts]:
    """Facts of every file: from the cache, else parsed (in ``jobs`` processes)."""
    results: dict[Path, FileFacts] = {}
    pending: list[tuple[Path, str]] = []
    relatives = {path: _relative(path, config.root) for path in files}
    keys = keys or file_keys(config, files, cache)
    for path in files:
        key = keys[path]
        cached = cache.get(relatives[path], key)
        if cached is not None:
            results[path] = cached
        else:
            pending.append((path, key))
    work = [(str(p), relatives[p]) for p, _ in pending]
    if jobs > 1 and len(work) > 32:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            collected = list(pool.map(_collect_one, work, chunksize=16))
    else:
        collected = [_collect_one(item) for item in work]
    for (path, key), data in zip(pending, collected, strict=True):
        cache.put(relatives[path], key, data)
        results[path] = FileFacts.from_dict(data)
    cache.save(set(relatives.values()))
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


def check_canonical(config: SsotConfig, files: list[Path]) -> None:
    """``ConfigError`` for a canonical module that is none of the scanned files."""
    modules = {module_name(path) for path in files}
    missing = sorted({m for m in config.canonical.values() if m not in modules})
    if missing:
        raise ConfigError(
            f"[tool.atoll.ssot.canonical] module(s) not found in the scanned paths: "
            f"{', '.join(missing)}"
        )


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
    if paths is None:
        check_canonical(config, files)
    cache_dir = config.root / ".ssot-cache" if use_cache else None
    cache = FactCache(cache_dir, config.fingerprint())
    keys = file_keys(config, files, cache)
    digest = hashlib.sha256(
        "\n".join(f"{_relative(p, config.root)}:{keys[p]}" for p in files).encode()
        + f"|{config.fingerprint()}|{config.severity}|{TOOL_VERSION}".encode()
    ).hexdigest()
    memo = cache.load_run(digest)
    if memo is not None:
        findings = [
            Finding(**{**f, "related": tuple(tuple(r) for r in f.get("related", ()))})
            for f in memo["findings"]
        ]
        result_metrics: dict[str, Any] = memo["metrics"]
        syntax_errors = [(p, e) for p, e in memo["syntax_errors"]]
    else:
        facts = collect_all(
            config, files, jobs=jobs or (os.cpu_count() or 1), cache=cache, keys=keys
        )
        findings = RuleEngine(config, facts).run()
        result_metrics = import_metrics(config, facts)
        syntax_errors = [(f.path, f.syntax_error) for f in facts if f.syntax_error]
        cache.save_run(
            digest,
            {
                "findings": [dataclasses.asdict(f) for f in findings],
                "metrics": result_metrics,
                "syntax_errors": syntax_errors,
            },
        )
    prints = fingerprints(findings)
    new = [f for f, p in zip(findings, prints, strict=True) if not baseline or p not in baseline]
    return ScanResult(
        findings=findings,
        new=new,
        metrics=result_metrics,
        files=len(files),
        syntax_errors=syntax_errors,
        duration=time.perf_counter() - started,
    )
