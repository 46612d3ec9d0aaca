"""The rules SSOT001–SSOT006 over the facts of every scanned file, and the metrics."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from atoll.ssot.config import SsotConfig
from atoll.ssot.facts import AUTH_FLAG, DECODERS, Definition, FileFacts

FALSY = frozenset({"", "0", "false", "no", "off", "none", "disabled"})
MAX_RELATED = 20
"""Other locations a finding lists (a name defined in 300 modules would list 299)."""
MAX_SITES_SHOWN = 5

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
    related: tuple[tuple[str, int], ...] = ()
    """Other (file, line) locations of the same problem (SARIF ``relatedLocations``)."""

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
        data = {**asdict(self), "name": self.name}
        data["related"] = [{"file": f, "line": n} for f, n in self.related]
        return data


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
        self.exports: dict[str, str] = {}
        """``pkg.Name`` -> what it re-exports (``from pkg.impl import Name`` in pkg)."""
        for f in self.files:
            for item in f.imports:
                if item.name and item.name != "*" and item.scope == "<module>":
                    exported = f"{item.module}.{item.name}"
                    self.exports.setdefault(f"{f.module}.{item.alias}", exported)
            for alias in f.aliases:
                self.exports.setdefault(f"{f.module}.{alias.name}", alias.target)

    def identity(self, dotted: str) -> str:
        """What ``dotted`` is, through re-exports and aliases (a bounded walk)."""
        seen = {dotted}
        for _ in range(20):
            following = self.exports.get(dotted)
            if following is None or following in seen:
                return dotted
            seen.add(following)
            dotted = following
        return dotted

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
        related: tuple[tuple[str, int], ...] = (),
    ) -> None:
        severity = self.config.severity_of(rule)
        self.findings.append(
            Finding(rule, severity, facts.path, line, column, message, symbol, scope, fix, related)
        )

    # -- per-file findings -------------------------------------------------------

    def _local(self) -> None:
        for facts in self.files:
            if facts.is_test:
                continue
            for item in facts.local:
                self._add(
                    item.rule, facts, item.line, item.col, item.message, item.symbol, item.scope,
                    related=tuple((facts.path, line) for line in item.related),
                )  # fmt: skip

    # -- SSOT001 -------------------------------------------------------------------

    def _duplicates(self) -> None:
        by_name: dict[tuple[str, str], list[tuple[FileFacts, Any, str]]] = defaultdict(list)
        enums: dict[tuple[str, ...], list[tuple[FileFacts, Any]]] = defaultdict(list)
        for facts in self.files:
            if facts.is_test:
                continue
            service = self.config.service_of(facts.module) or ""
            for definition in facts.definitions:
                if definition.name.startswith("_") or definition.name == "main":
                    continue
                identity = f"{facts.module}.{definition.name}"
                by_name[(definition.name, service)].append((facts, definition, identity))
                if definition.kind == "enum" and len(definition.members) >= 2:
                    enums[tuple(definition.members)].append((facts, definition))
            for alias in facts.aliases:  # `WebSocketManager = ConnectionExecutor` defines one
                target = self.identity(alias.target)
                if alias.name.startswith("_") or target not in self.classes:
                    continue
                definition = Definition(alias.name, "alias", alias.line, alias.col)
                by_name[(alias.name, service)].append((facts, definition, target))
        canonical_by_name = {
            key.rpartition(".")[2]: value for key, value in self.config.canonical.items()
        }
        for (name, _), sites in by_name.items():
            identities = {identity for _, _, identity in sites}
            if len(identities) < 2 or _namesakes(sites):
                continue
            modules = {facts.module for facts, _, _ in sites}
            where = _listed(sorted(f"{f.path}:{d.line}" for f, d, _ in sites))
            canonical = canonical_by_name.get(name)
            for facts, definition, _ in sites:
                if canonical == facts.module:
                    continue
                note = f"; the canonical one is in {canonical}" if canonical else ""
                others = tuple(
                    sorted((f.path, d.line) for f, d, _ in sites if (f, d) != (facts, definition))
                )[:MAX_RELATED]
                self._add(
                    "SSOT001",
                    facts,
                    definition.line,
                    definition.col,
                    f"{definition.kind} {name} is defined in {len(modules)} modules "
                    f"({where}){note}: one concept, one definition",
                    name,
                    "<module>",
                    related=others,
                )
        for members, enum_sites in enums.items():
            names = {d.name for _, d in enum_sites}
            if len(names) < 2:
                continue
            where = _listed(sorted(f"{d.name} ({f.path}:{d.line})" for f, d in enum_sites))
            for facts, definition in enum_sites:
                others = tuple(
                    sorted((f.path, d.line) for f, d in enum_sites if (f, d) != (facts, definition))
                )[:MAX_RELATED]
                self._add(
                    "SSOT001",
                    facts,
                    definition.line,
                    definition.col,
                    f"enum {definition.name} has the same members ({', '.join(members)}) "
                    f"as another enum: {where}",
                    definition.name,
                    "<module>",
                    related=others,
                )

    # -- SSOT002 / SSOT003 ---------------------------------------------------------

    def _deprecated_target(self, module: str, name: str | None) -> tuple[str, str] | None:
        """The deprecated key and replacement for importing ``name`` from ``module``."""
        deprecated = self.config.retired
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
                # The canonical module itself imports from its implementation: that is
                # how it is the one home, not a violation.
                if item.module != module and same_package and facts.module != module:
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
                if key in self.config.retired:
                    self._add(
                        "SSOT002",
                        facts,
                        use.line,
                        use.col,
                        f"{use.name} is used through the deprecated module {use.module}; "
                        f"use {self.config.retired[key]}",
                        use.name,
                        use.scope,
                        str(self.config.retired[key]),
                    )

    # -- SSOT004 (instances) / SSOT005 / SSOT006 -----------------------------------------

    def _calls(self) -> None:
        allowed = {self.identity(k): v for k, v in self.config.factory_only.items()}
        auth = set(self.config.auth_modules)
        for facts in self.files:
            if auth and facts.module not in auth and not facts.is_test:
                for function in facts.token_functions:
                    self._add(
                        "SSOT006",
                        facts,
                        function.line,
                        function.col,
                        f"{function.name}() validates tokens outside the auth modules "
                        f"({', '.join(sorted(auth))}): one token-validation function",
                        function.name,
                        "<module>",
                    )
            for call in facts.calls:
                if facts.is_test:
                    continue
                if call.args or (call.keywords and call.target not in DECODERS):
                    self._env_flag(facts, call)
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
                target = self.identity(self._class_of(call.target, facts))
                if call.via_cls and self.config.factory_classmethods:
                    continue  # the class's own alternative constructors (configurable)
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
        return self.identity(target) in self.classes

    def _env_flag(self, facts: FileFacts, call: Any) -> None:
        """An auth-bypass switch read from the environment (any configured accessor)."""
        accessor = next(
            (a for a in self.config.env_accessors
             if call.target == a or call.target.endswith("." + a)),
            None,
        )  # fmt: skip
        if accessor is None:
            return
        first = call.args[0] if call.args else None
        flag = first if isinstance(first, str) and AUTH_FLAG.search(first) else call.assigned_to
        if not flag or not AUTH_FLAG.search(flag):
            return
        default = call.args[1] if len(call.args) > 1 else call.keywords.get("default")
        on = default not in (None, "<expr>") and str(default).strip().lower() not in FALSY
        on = on and default is not False and default != 0
        self._add(
            "SSOT006",
            facts,
            call.line,
            call.col,
            f"auth bypass switch {flag} is read from the environment ({call.target})"
            + (f" and defaults to ON ({default!r}): the worst case" if on else "")
            + ": identity must come only from a verified token",
            flag,
            call.scope,
        )

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


def _listed(sites: list[str]) -> str:
    """The first few sites, and how many more."""
    shown = ", ".join(sites[:MAX_SITES_SHOWN])
    more = len(sites) - MAX_SITES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def _namesakes(sites: list[tuple[FileFacts, Any, str]]) -> bool:
    """Classes that only share a name: each offers members and no two share one."""
    if any(d.kind != "class" or not d.members for _, d, _ in sites):
        return False
    seen: set[str] = set()
    for _, definition, _ in sites:
        members = set(definition.members)
        if members & seen:
            return False
        seen |= members
    return True


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
