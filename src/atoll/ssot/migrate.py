"""``atoll ssot migrate`` and ``rollback``: rewrite imports, validate, keep checkpoints.

Before a file is written, a checkpoint records its path, the SHA-256 of its
bytes before and after, and the original bytes. Each written file goes up the
validation ladder — it parses; every import in it resolves (statically, to the
project's modules or an installed package); with ``tests``, the test command
passes (once per batch). A file that fails is restored at once and reported.
``rollback`` restores files whose current bytes are still the recorded "after"
(others are conflicts, left alone unless forced) and verifies the "before" hash.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import json
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.ssot.codemod import Registry, rewrite
from atoll.ssot.config import ConfigError, SsotConfig
from atoll.ssot.facts import FileFacts, absolute_module, module_name
from atoll.ssot.scanner import FactCache, collect_all, discover

CHECKPOINTS = ".ssot-checkpoints"


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class MigrationReport:
    """What a migration changed, refused and restored."""

    checkpoint: str | None = None
    changed: dict[str, list[str]] = field(default_factory=dict)
    restored: dict[str, str] = field(default_factory=dict)
    diffs: list[str] = field(default_factory=list)


def registry_for(config: SsotConfig, rules: set[str]) -> Registry:
    """The replacements of the selected rules."""
    canonical: dict[str, str] = {}
    packages: dict[str, str] = {}
    if "SSOT003" in rules:
        for symbol, module in config.canonical.items():
            canonical[symbol.rpartition(".")[2]] = module
            packages[symbol.rpartition(".")[2]] = module.split(".")[0]
    deprecated = dict(config.deprecated) if "SSOT002" in rules else {}
    return Registry(deprecated=deprecated, canonical=canonical, canonical_package=packages)


class ImportChecker:
    """Does every import of a file resolve? Project modules and their names, else installed."""

    def __init__(self, facts: list[FileFacts]) -> None:
        self.modules = {f.module: f for f in facts}

    def problems(self, source: str, path: Path) -> list[str]:
        """Imports of ``source`` that do not resolve."""
        tree = ast.parse(source)
        package = module_name(path)
        if path.name != "__init__.py":
            package = package.rpartition(".")[0]
        missing = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                missing += [a.name for a in node.names if not self._module_exists(a.name)]
            elif isinstance(node, ast.ImportFrom):
                base = absolute_module(package, node.module, node.level)
                for alias in node.names:
                    if alias.name != "*" and not self._name_exists(base, alias.name):
                        missing.append(f"{base}.{alias.name}")
        return missing

    def _module_exists(self, module: str) -> bool:
        if module in self.modules:
            return True
        top = module.split(".")[0]
        if any(m.split(".")[0] == top for m in self.modules):
            return False  # a project package: its modules must be in the project
        try:
            return importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            return False

    def _name_exists(self, module: str, name: str) -> bool:
        if f"{module}.{name}" in self.modules:
            return True
        facts = self.modules.get(module)
        if facts is not None:
            return (
                any(d.name == name for d in facts.definitions)
                or any(i.alias == name for i in facts.imports)
                or name in {c.assigned_to for c in facts.calls if c.assigned_to}
            )
        return self._module_exists(module)


def _checkpoint_dir(config: SsotConfig) -> Path:
    return config.root / CHECKPOINTS


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
    facts = collect_all(config, files, jobs=1, cache=FactCache(None, config.fingerprint()))
    registry = registry_for(config, rules)
    report = MigrationReport()
    planned: list[tuple[Path, bytes, bytes, list[str]]] = []
    for path, file_facts in zip(files, facts, strict=True):
        if file_facts.syntax_error:
            continue
        original = path.read_bytes()
        package = (
            file_facts.module
            if path.name == "__init__.py"
            else file_facts.module.rpartition(".")[0]
        )
        new_source, changes = rewrite(original.decode("utf-8"), package, registry)
        if changes and new_source.encode("utf-8") != original:
            planned.append((path, original, new_source.encode("utf-8"), list(changes)))
    for path, original, updated, _ in planned:
        relative = path.relative_to(config.root).as_posix()
        report.diffs.append(patch(original.decode(), updated.decode(), relative))
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
    for index, (path, original, updated, _) in enumerate(planned):
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
    for path, original, updated, changes in planned:
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
        after = collect_all(
            config, discover(config, paths), jobs=1, cache=FactCache(None, config.fingerprint())
        )
        checker = ImportChecker(after)
        for path, original in list(written):
            missing = checker.problems(path.read_text(encoding="utf-8"), path)
            if missing:
                relative = path.relative_to(config.root).as_posix()
                path.write_bytes(original)
                report.restored[relative] = f"unresolved import(s): {', '.join(missing)}"
                report.changed.pop(relative, None)
                written.remove((path, original))
    if validate == "tests" and written and test_command:
        result = subprocess.run(  # noqa: S603 - the operator's own test command, by design
            shlex.split(test_command), cwd=config.root, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            for path, original in written:
                relative = path.relative_to(config.root).as_posix()
                path.write_bytes(original)
                report.restored[relative] = f"test command failed (exit {result.returncode})"
                report.changed.pop(relative, None)
    return report


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
