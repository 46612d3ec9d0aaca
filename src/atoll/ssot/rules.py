"""The rules SSOT001–SSOT006 over the facts of every scanned file, and the metrics."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from atoll.ssot.config import SsotConfig
from atoll.ssot.facts import DECODERS, FileFacts

RULE_NAMES = {
    "SSOT001": "duplicate-definition",
    "SSOT002": "deprecated-import",
    "SSOT003": "non-canonical-import",
    "SSOT004": "shared-state",
    "SSOT005": "factory-bypass",
    "SSOT006": "auth-bypass",
}


@dataclass(frozen=True)
class Finding:
    """One violation: where, what, why, and the fix when there is one."""

    rule: str
    severity: str
    file: str
    line: int
    column: int
    message: str
    symbol: str
    scope: str
    fix: str | None = None

    @property
    def name(self) -> str:
        """The rule's name (``duplicate-definition`` …)."""
        return RULE_NAMES[self.rule]

    def fingerprint(self, occurrence: int) -> str:
        """Line-independent identity: rule, file, symbol, scope and occurrence index."""
        key = f"{self.rule}|{self.file}|{self.symbol}|{self.scope}|{occurrence}"
        return hashlib.sha256(key.encode()).hexdigest()[:20]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**asdict(self), "name": self.name}


def _split(target: str) -> tuple[str, str | None]:
    """``pkg.mod:Name`` -> (``pkg.mod``, ``Name``); ``pkg.mod`` -> (``pkg.mod``, None)."""
    module, _, name = target.partition(":")
    return module, name or None


class RuleEngine:
    """Applies every rule to the facts of one scan."""

    def __init__(self, config: SsotConfig, files: list[FileFacts]) -> None:
        self.config = config
        self.files = [f for f in files if f.syntax_error is None]
        self.findings: list[Finding] = []
        self.project_modules = {f.module for f in self.files}
        self.classes = {
            f"{f.module}.{d.name}"
            for f in self.files
            for d in f.definitions
            if d.kind != "function"
        }

    def run(self) -> list[Finding]:
        """All findings, sorted by file and position (``off`` rules dropped)."""
        self._local()
        self._duplicates()
        self._imports()
        self._calls()
        kept = [f for f in self.findings if f.severity != "off"]
        return sorted(kept, key=lambda f: (f.file, f.line, f.column, f.rule))

    def _add(
        self,
        rule: str,
        facts: FileFacts,
        line: int,
        column: int,
        message: str,
        symbol: str,
        scope: str,
        fix: str | None = None,
    ) -> None:
        severity = self.config.severity_of(rule)
        self.findings.append(
            Finding(rule, severity, facts.path, line, column, message, symbol, scope, fix)
        )

    # -- per-file findings -------------------------------------------------------

    def _local(self) -> None:
        for facts in self.files:
            if facts.is_test:
                continue
            for item in facts.local:
                self._add(
                    item.rule, facts, item.line, item.col, item.message, item.symbol, item.scope
                )

    # -- SSOT001 -------------------------------------------------------------------

    def _duplicates(self) -> None:
        by_name: dict[str, list[tuple[FileFacts, Any]]] = defaultdict(list)
        enums: dict[tuple[str, ...], list[tuple[FileFacts, Any]]] = defaultdict(list)
        for facts in self.files:
            if facts.is_test:
                continue
            for definition in facts.definitions:
                if definition.name.startswith("_") or definition.name == "main":
                    continue
                by_name[definition.name].append((facts, definition))
                if definition.kind == "enum" and len(definition.members) >= 2:
                    enums[tuple(definition.members)].append((facts, definition))
        canonical_by_name = {
            key.rpartition(".")[2]: value for key, value in self.config.canonical.items()
        }
        for name, sites in by_name.items():
            modules = {facts.module for facts, _ in sites}
            if len(modules) < 2:
                continue
            where = ", ".join(sorted(f"{f.path}:{d.line}" for f, d in sites))
            canonical = canonical_by_name.get(name)
            for facts, definition in sites:
                if canonical == facts.module:
                    continue
                note = f"; the canonical one is in {canonical}" if canonical else ""
                self._add(
                    "SSOT001",
                    facts,
                    definition.line,
                    definition.col,
                    f"{definition.kind} {name} is defined in {len(modules)} modules "
                    f"({where}){note}: one concept, one definition",
                    name,
                    "<module>",
                )
        for members, sites in enums.items():
            names = {d.name for _, d in sites}
            if len(names) < 2:
                continue
            where = ", ".join(sorted(f"{d.name} ({f.path}:{d.line})" for f, d in sites))
            for facts, definition in sites:
                self._add(
                    "SSOT001",
                    facts,
                    definition.line,
                    definition.col,
                    f"enum {definition.name} has the same members ({', '.join(members)}) "
                    f"as another enum: {where}",
                    definition.name,
                    "<module>",
                )

    # -- SSOT002 / SSOT003 ---------------------------------------------------------

    def _deprecated_target(self, module: str, name: str | None) -> tuple[str, str] | None:
        """The deprecated key and replacement for importing ``name`` from ``module``."""
        deprecated = self.config.deprecated
        if name is not None and f"{module}:{name}" in deprecated:
            return f"{module}:{name}", deprecated[f"{module}:{name}"]
        if name is not None and f"{module}.{name}" in deprecated:
            return f"{module}.{name}", deprecated[f"{module}.{name}"]
        if module in deprecated:
            return module, deprecated[module]
        return None

    def _imports(self) -> None:
        canonical_names: dict[str, tuple[str, str]] = {}
        for symbol, module in self.config.canonical.items():
            canonical_names[symbol.rpartition(".")[2]] = (symbol, module)
        for facts in self.files:
            for item in facts.imports:
                hit = self._deprecated_target(item.module, item.name)
                shown = (
                    f"from {item.module} import {item.name}"
                    if item.name
                    else f"import {item.module}"
                )
                if hit is not None:
                    old, new = hit
                    new_module, new_name = _split(new)
                    fix = (
                        f"from {new_module} import {new_name}"
                        if new_name
                        else f"import {new_module}"
                    )
                    self._add(
                        "SSOT002",
                        facts,
                        item.line,
                        item.col,
                        f"`{shown}` uses the deprecated {old}; use {new}",
                        item.name or item.module,
                        item.scope,
                        fix,
                    )
                    continue
                if item.name is None or item.name not in canonical_names:
                    continue
                symbol, module = canonical_names[item.name]
                same_package = item.module.split(".")[0] == module.split(".")[0]
                if item.module != module and same_package:
                    self._add(
                        "SSOT003",
                        facts,
                        item.line,
                        item.col,
                        f"{item.name} is imported from {item.module}; its one home is {module}",
                        item.name,
                        item.scope,
                        f"from {module} import {item.name}",
                    )
            for use in facts.attributes:
                key = f"{use.module}:{use.name}"
                if key in self.config.deprecated:
                    self._add(
                        "SSOT002",
                        facts,
                        use.line,
                        use.col,
                        f"{use.name} is used through the deprecated module {use.module}; "
                        f"use {self.config.deprecated[key]}",
                        use.name,
                        use.scope,
                        str(self.config.deprecated[key]),
                    )

    # -- SSOT004 (instances) / SSOT005 / SSOT006 -----------------------------------------

    def _calls(self) -> None:
        allowed = self.config.factory_only
        auth = set(self.config.auth_modules)
        for facts in self.files:
            for call in facts.calls:
                if facts.is_test:
                    continue
                if call.module_level and call.assigned_to and self._project_class(call.target):
                    self._add(
                        "SSOT004",
                        facts,
                        call.line,
                        call.col,
                        f"module-level instance {call.assigned_to} = "
                        f"{call.target.rpartition('.')[2]}(…) is shared by every user "
                        "and request; build it in a factory or the app's lifespan",
                        call.assigned_to,
                        "<module>",
                    )
                target = self._class_of(call.target, facts)
                if target in allowed and facts.module not in allowed[target]:
                    self._add(
                        "SSOT005",
                        facts,
                        call.line,
                        call.col,
                        f"{target.rpartition('.')[2]} is constructed outside its factory "
                        f"({', '.join(allowed[target])})",
                        target,
                        call.scope,
                    )
                if call.target in DECODERS:
                    self._decoder(facts, call, auth)

    def _project_class(self, target: str) -> bool:
        return target in self.classes

    def _class_of(self, target: str, facts: FileFacts) -> str:
        if "." not in target:
            return f"{facts.module}.{target}"
        return target

    def _decoder(self, facts: FileFacts, call: Any, auth: set[str]) -> None:
        options = call.keywords.get("options")
        unverified = call.keywords.get("verify") is False or (
            isinstance(options, dict) and options.get("verify_signature") is False
        )
        algorithms = call.keywords.get("algorithms")
        none_alg = isinstance(algorithms, list | tuple) and any(
            str(a).lower() == "none" for a in algorithms
        )
        if unverified or none_alg:
            self._add(
                "SSOT006",
                facts,
                call.line,
                call.col,
                "token decoded with signature verification off or the `none` algorithm",
                call.target,
                call.scope,
            )
        elif auth and facts.module not in auth and not facts.is_test:
            self._add(
                "SSOT006",
                facts,
                call.line,
                call.col,
                f"token decoded outside the auth modules ({', '.join(sorted(auth))}): "
                "one validation path",
                call.target,
                call.scope,
            )


def import_metrics(config: SsotConfig, files: Iterable[FileFacts]) -> dict[str, Any]:
    """Canonical import usage % per registry symbol and in total, and fragmentation."""
    per_symbol: dict[str, dict[str, Any]] = {}
    total = canonical_total = 0
    fragmentation = 0
    for symbol, module in config.canonical.items():
        name = symbol.rpartition(".")[2]
        paths: dict[str, int] = defaultdict(int)
        for facts in files:
            for item in facts.imports:
                if item.name == name and item.module.split(".")[0] == module.split(".")[0]:
                    paths[item.module] += 1
        count = sum(paths.values())
        canonical = paths.get(module, 0)
        total += count
        canonical_total += canonical
        fragmentation += max(len(paths) - 1, 0)
        per_symbol[symbol] = {
            "imports": count,
            "canonical_imports": canonical,
            "canonical_usage_pct": round(100.0 * canonical / count, 1) if count else 100.0,
            "import_paths": dict(sorted(paths.items())),
        }
    return {
        "symbols": per_symbol,
        "canonical_usage_pct": round(100.0 * canonical_total / total, 1) if total else 100.0,
        "fragmentation": fragmentation,
    }
