"""``atoll ssot migrate`` and ``rollback``: rewrite imports, validate, keep checkpoints.

Only ``moved`` paths (the same object under a new import path) and canonical homes
are rewritten; a ``replaced`` or ``deprecated`` path (a different API) is listed for
a person. Only files that import something to rewrite are parsed with LibCST; a
rewrite whose new imports name what the scanned tree does not define is refused
before anything is written. Before a file is written, a checkpoint records its path,
the SHA-256 of its bytes before and after, and the original bytes. Each written file
goes up the validation ladder — it parses; with ``imports`` (the default), what the
migration changed still resolves (the names other modules import from a rewritten
module); with ``tests``, the test command passes (once per batch). A file that fails
is restored at once and reported.
``rollback`` restores files whose current bytes are still the recorded "after"
(others are conflicts, left alone unless forced) and verifies the "before" hash.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import shlex
import subprocess
import time
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.ssot.codemod import Registry, rewrite
from atoll.ssot.config import ConfigError, SsotConfig
from atoll.ssot.facts import FileFacts, collect
from atoll.ssot.scanner import FactCache, collect_all, discover

CHECKPOINTS = ".ssot-checkpoints"


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class MigrationReport:
    """What a migration changed, refused, restored, and left to a person."""

    checkpoint: str | None = None
    changed: dict[str, list[str]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    """Files not rewritten because a new import would name what does not exist."""
    restored: dict[str, str] = field(default_factory=dict)
    manual: list[str] = field(default_factory=list)
    """Uses of ``replaced``/``deprecated`` paths: a different API, ported by a person."""
    diffs: list[str] = field(default_factory=list)


def registry_for(config: SsotConfig, rules: set[str]) -> Registry:
    """The rewrites of the selected rules: ``moved`` paths (SSOT002) and canonical homes
    (SSOT003) — the same object under another import path, never a different API."""
    canonical: dict[str, str] = {}
    packages: dict[str, str] = {}
    if "SSOT003" in rules:
        for symbol, module in config.canonical.items():
            canonical[symbol.rpartition(".")[2]] = module
            packages[symbol.rpartition(".")[2]] = module.split(".")[0]
    moved = dict(config.moved) if "SSOT002" in rules else {}
    return Registry(moved=moved, canonical=canonical, canonical_package=packages)


class ImportChecker:
    """Whether a module of the scanned tree defines a name, statically: its definitions,
    imports (re-exports), module-level assignments and submodules."""

    def __init__(self, facts: list[FileFacts]) -> None:
        self.modules = {f.module: f for f in facts if f.syntax_error is None}

    def update(self, facts: FileFacts) -> None:
        """Take a file's facts as they are after rewriting."""
        self.modules[facts.module] = facts

    def defines(self, module: str, name: str | None) -> bool:
        """Whether ``from module import name`` (or ``import module``) resolves in the tree."""
        if name is None:
            return module in self.modules
        if f"{module}.{name}" in self.modules:
            return True
        facts = self.modules.get(module)
        return facts is not None and facts.defines(name)


def source_encoding(data: bytes) -> str:
    """The encoding Python reads ``data`` with (a UTF-8 BOM, a PEP 263 cookie, else UTF-8)."""
    return tokenize.detect_encoding(io.BytesIO(data).readline)[0]


def _key_modules(keys: dict[str, str]) -> set[str]:
    """Modules whose import makes a file a candidate: ``mod`` of ``mod:Name`` keys (its
    names may be used as ``alias.Name``) and module keys themselves."""
    return {key.partition(":")[0] for key in keys}


def _candidate(facts: FileFacts, registry: Registry, moved_modules: set[str]) -> bool:
    """Whether the file imports anything the registry rewrites (else LibCST is not run)."""
    for item in facts.imports:
        if item.name is not None and registry.replacement(item.module, item.name) is not None:
            return True
        dotted = item.module if item.name is None else f"{item.module}.{item.name}"
        if dotted in registry.moved or dotted in moved_modules:
            return True
    return False


def _manual(config: SsotConfig, facts: list[FileFacts]) -> list[str]:
    """Imports of a path replaced by a different API: for a person, never rewritten."""
    replaced = {**config.deprecated, **config.replaced}
    found = []
    for file_facts in facts:
        for item in file_facts.imports:
            keys = (
                [item.module]
                if item.name is None
                else [f"{item.module}:{item.name}", f"{item.module}.{item.name}", item.module]
            )
            key = next((k for k in keys if k in replaced and k not in config.moved), None)
            if key is not None:
                shown = f"from {item.module} import {item.name}" if item.name else item.module
                found.append(
                    f"{file_facts.path}:{item.line}: {shown} — replaced by {replaced[key]} "
                    "(a different API): port it by hand"
                )
    return found


def _checkpoint_dir(config: SsotConfig) -> Path:
    return config.root / CHECKPOINTS


def _package(path: Path, module: str) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def migrate(
    config: SsotConfig,
    paths: list[str] | None = None,
    *,
    rules: set[str],
    dry_run: bool = False,
    validate: str = "imports",
    test_command: str | None = None,
) -> MigrationReport:
    """Rewrite the imports the rules can fix; see the module docstring."""
    if validate == "tests" and not test_command:
        raise ConfigError("--validate tests needs --test-cmd")
    files = discover(config, paths)
    tree = discover(config) if paths else files  # what imports are checked against
    cache = FactCache(config.root / ".ssot-cache", config.fingerprint())
    facts_of = dict(zip(tree, collect_all(config, tree, jobs=os.cpu_count() or 1, cache=cache),
                        strict=True))  # fmt: skip
    checker = ImportChecker(list(facts_of.values()))
    registry = registry_for(config, rules)
    moved_modules = _key_modules(registry.moved)
    report = MigrationReport(manual=_manual(config, [facts_of[p] for p in files]))
    planned: list[tuple[Path, bytes, bytes, list[str], str]] = []
    for path in files:
        file_facts = facts_of[path]
        if file_facts.syntax_error or not _candidate(file_facts, registry, moved_modules):
            continue
        relative = path.relative_to(config.root).as_posix()
        original = path.read_bytes()
        try:
            encoding = source_encoding(original)
            text = original.decode(encoding)
        except (SyntaxError, UnicodeDecodeError, LookupError) as exc:
            report.refused[relative] = f"cannot be read as Python source ({exc})"
            continue
        result = rewrite(text, _package(path, file_facts.module), registry)
        updated = result.code.encode(encoding)
        if not result.changes or updated == original:
            continue
        missing = sorted(
            f"{module}.{name}" if name else module
            for module, name in set(result.targets)
            if not checker.defines(module, name)
        )
        if missing:
            report.refused[relative] = (
                f"would import {', '.join(missing)}, which the scanned tree does not define "
                "(a wrong `moved` entry, or a target outside `paths`)"
            )
            continue
        planned.append((path, original, updated, list(result.changes), encoding))
    for path, original, updated, _, encoding in planned:
        relative = path.relative_to(config.root).as_posix()
        report.diffs.append(patch(original.decode(encoding), updated.decode(encoding), relative))
    if dry_run or not planned:
        return report
    checkpoint_id = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"
    directory = _checkpoint_dir(config) / checkpoint_id
    directory.mkdir(parents=True)
    manifest: dict[str, Any] = {
        "id": checkpoint_id,
        "created": time.time(),
        "rules": sorted(rules),
        "files": [],
    }
    for index, (path, original, updated, _, _) in enumerate(planned):
        (directory / f"{index}.orig").write_bytes(original)
        manifest["files"].append(
            {
                "path": path.relative_to(config.root).as_posix(),
                "original": f"{index}.orig",
                "sha256_before": sha256(original),
                "sha256_after": sha256(updated),
            }
        )
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    report.checkpoint = checkpoint_id
    written: list[tuple[Path, bytes]] = []
    for path, original, updated, changes, _ in planned:
        relative = path.relative_to(config.root).as_posix()
        path.write_bytes(updated)
        problem = _parse_problem(path, updated)
        if problem:
            path.write_bytes(original)
            report.restored[relative] = problem
            continue
        written.append((path, original))
        report.changed[relative] = changes
    if validate in ("imports", "tests") and written:
        _check_what_changed(config, written, facts_of, checker, report)
    if validate == "tests" and written and test_command:
        ran = subprocess.run(  # noqa: S603 - the operator's own test command, by design
            shlex.split(test_command), cwd=config.root, capture_output=True, text=True, check=False
        )
        if ran.returncode != 0:
            for path, original in written:
                relative = path.relative_to(config.root).as_posix()
                path.write_bytes(original)
                report.restored[relative] = f"test command failed (exit {ran.returncode})"
                report.changed.pop(relative, None)
    return report


def _check_what_changed(
    config: SsotConfig,
    written: list[tuple[Path, bytes]],
    facts_of: dict[Path, FileFacts],
    checker: ImportChecker,
    report: MigrationReport,
) -> None:
    """The ``imports`` level: what the migration changed still resolves — names other
    modules import from a rewritten module (its re-exports) still exist in it. Nothing
    else is judged: the rest of the world is as it was."""
    for path, _ in written:
        relative = path.relative_to(config.root).as_posix()
        checker.update(collect(path, relative, path.read_bytes()))
    rewritten = {facts_of[path].module: (path, original) for path, original in written}
    broken: dict[str, list[str]] = {}
    for file_facts in facts_of.values():
        for item in file_facts.imports:
            if item.name is None or item.module not in rewritten:
                continue
            if not checker.defines(item.module, item.name):
                broken.setdefault(item.module, []).append(
                    f"{file_facts.path}:{item.line} imports {item.name} from it"
                )
    for module, uses in broken.items():
        path, original = rewritten[module]
        relative = path.relative_to(config.root).as_posix()
        path.write_bytes(original)
        checker.update(collect(path, relative, original))
        report.restored[relative] = f"a name others import from it would be gone ({uses[0]})"
        report.changed.pop(relative, None)
        written.remove((path, original))


def _parse_problem(path: Path, data: bytes) -> str | None:
    try:
        compile(data, str(path), "exec")
    except SyntaxError as exc:
        return f"does not parse after rewriting: {exc.msg} (line {exc.lineno})"
    return None


@dataclass
class RollbackReport:
    """Files restored, conflicts left alone, and verification failures."""

    restored: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)


def list_checkpoints(config: SsotConfig) -> list[dict[str, Any]]:
    """Every checkpoint's manifest, oldest first."""
    directory = _checkpoint_dir(config)
    if not directory.is_dir():
        return []
    manifests = []
    for entry in sorted(directory.iterdir()):
        manifest = entry / "manifest.json"
        if manifest.exists():
            manifests.append(json.loads(manifest.read_text(encoding="utf-8")))
    return manifests


def rollback(config: SsotConfig, checkpoint: str | None, *, force: bool = False) -> RollbackReport:
    """Restore the files of ``checkpoint`` (None: the last one)."""
    manifests = list_checkpoints(config)
    if not manifests:
        raise ConfigError("there are no checkpoints to roll back")
    chosen = (
        manifests[-1]
        if checkpoint is None
        else next((m for m in manifests if m["id"] == checkpoint), None)
    )
    if chosen is None:
        raise ConfigError(f"no checkpoint {checkpoint!r} (see `atoll ssot checkpoints`)")
    directory = _checkpoint_dir(config) / chosen["id"]
    report = RollbackReport()
    for entry in chosen["files"]:
        path = config.root / entry["path"]
        current = path.read_bytes() if path.exists() else b""
        if sha256(current) == entry["sha256_before"]:
            continue  # already as it was
        if sha256(current) != entry["sha256_after"] and not force:
            report.conflicts.append(entry["path"])
            continue
        original = (directory / entry["original"]).read_bytes()
        path.write_bytes(original)
        if sha256(path.read_bytes()) == entry["sha256_before"]:
            report.restored.append(entry["path"])
        else:
            report.unverified.append(entry["path"])
    return report


def patch(original: str, updated: str, relative: str) -> str:
    """A unified diff of one file that ``git apply`` and ``patch`` accept.

    ``difflib`` leaves the last line of a file without a trailing newline
    unterminated, which runs it into the next line of the patch; like ``diff``,
    such a line is ended and followed by ``\\ No newline at end of file``.
    """
    lines = difflib.unified_diff(
        _lines(original),
        _lines(updated),
        fromfile=f"a/{relative}",
        tofile=f"b/{relative}",
    )
    return "".join(
        line if line.endswith("\n") else f"{line}\n\\ No newline at end of file\n" for line in lines
    )


def _lines(text: str) -> list[str]:
    """``text`` split after each ``\\n`` only (``str.splitlines`` also splits on form
    feeds and other separators that git keeps inside a line)."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
