"""``[tool.atoll.ssot]`` in the scanned project's ``pyproject.toml``."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RULES = ("SSOT001", "SSOT002", "SSOT003", "SSOT004", "SSOT005", "SSOT006")
SEVERITIES = ("error", "warning", "off")
KEYS = frozenset(
    {
        "paths",
        "exclude",
        "baseline",
        "auth_modules",
        "canonical",
        "deprecated",
        "moved",
        "replaced",
        "factory_only",
        "factory_classmethods",
        "env_accessors",
        "boundaries",
        "severity",
    }
)
"""Every key ``[tool.atoll.ssot]`` may have: any other is a typo, and an error."""
DEFAULT_SEVERITY = {
    "SSOT001": "warning",  # a duplicate concept: a person decides which one stays
    "SSOT002": "error",  # a deprecated import: migrate fixes the moved ones
    "SSOT003": "warning",  # not the canonical import path: the same object, migrate fixes it
    "SSOT004": "warning",  # shared state: a risk to review, not always a bug
    "SSOT005": "error",  # a factory bypass: breaks per-user isolation
    "SSOT006": "error",  # an auth bypass
}
"""What each rule's findings are unless ``[tool.atoll.ssot.severity]`` says otherwise;
``scan`` exits 1 on a new ``error``."""
DEFAULT_ENV_ACCESSORS = ("os.getenv", "os.environ.get", "getenv", "environ.get")


class ConfigError(Exception):
    """The configuration cannot be used; the message is one clear line."""


@dataclass(frozen=True)
class SsotConfig:
    """What to scan and the project's registry of canonical symbols."""

    root: Path
    paths: tuple[str, ...] = (".",)
    exclude: tuple[str, ...] = ()
    baseline: str | None = None
    auth_modules: tuple[str, ...] = ()
    canonical: dict[str, str] = field(default_factory=dict)
    deprecated: dict[str, str] = field(default_factory=dict)
    """Old -> new where the new is a different API (as ``replaced``): reported, never
    rewritten by migrate."""
    moved: dict[str, str] = field(default_factory=dict)
    """Old -> new import path of the same object: reported, and rewritten by migrate."""
    replaced: dict[str, str] = field(default_factory=dict)
    factory_only: dict[str, tuple[str, ...]] = field(default_factory=dict)
    factory_classmethods: bool = True
    """Whether ``cls(...)`` inside a factory-only class's own classmethods is allowed."""
    env_accessors: tuple[str, ...] = DEFAULT_ENV_ACCESSORS
    """Calls that read the environment: ``os.getenv`` … plus the project's wrappers
    (``env_accessors = ["settings.env.get"]``), matched on the call's dotted name."""
    boundaries: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Service name -> its top modules: a name defined in two services is not a duplicate."""
    severity: dict[str, str] = field(default_factory=dict)

    @property
    def retired(self) -> dict[str, str]:
        """Every old import path with its replacement (deprecated, replaced and moved)."""
        return {**self.deprecated, **self.replaced, **self.moved}

    def service_of(self, module: str) -> str | None:
        """The service (``boundaries``) ``module`` belongs to, if any."""
        for service, prefixes in self.boundaries.items():
            if any(module == p or module.startswith(p + ".") for p in prefixes):
                return service
        return None

    def severity_of(self, rule: str) -> str:
        """The rule's default severity (``DEFAULT_SEVERITY``) unless overridden."""
        return self.severity.get(rule, DEFAULT_SEVERITY[rule])

    def fingerprint(self) -> str:
        """A hash of everything that changes findings (part of the cache key)."""
        data = {
            "exclude": self.exclude,
            "auth": self.auth_modules,
            "canonical": self.canonical,
            "deprecated": self.deprecated,
            "moved": self.moved,
            "replaced": self.replaced,
            "factory": self.factory_only,
            "factory_classmethods": self.factory_classmethods,
            "env": self.env_accessors,
            "boundaries": self.boundaries,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _strings(table: dict[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = table.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"[tool.atoll.ssot] {key} must be a list of strings")
    return tuple(value)


def _mapping(table: dict[str, Any], key: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[tool.atoll.ssot.{key}] must be a table")
    return value


def load_config(root: Path) -> SsotConfig:
    """Read the configuration of the project at ``root`` (defaults when there is none).

    A root that is not a directory, a key that is not one of ``KEYS`` and a path that
    does not exist are errors (``ConfigError``: one line, exit 2).
    """
    if not root.is_dir():
        raise ConfigError(f"--root {root}: no such directory")
    pyproject = root / "pyproject.toml"
    if not pyproject.exists():
        return SsotConfig(root=root)
    try:
        document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{pyproject}: not valid TOML ({exc})") from None
    table = document.get("tool", {}).get("atoll", {}).get("ssot", {})
    if not isinstance(table, dict):
        raise ConfigError("[tool.atoll.ssot] must be a table")
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise ConfigError(
            f"[tool.atoll.ssot] unknown key(s): {', '.join(unknown)} "
            f"(known: {', '.join(sorted(KEYS))})"
        )
    canonical = _mapping(table, "canonical")
    deprecated = _mapping(table, "deprecated")
    moved = _mapping(table, "moved")
    replaced = _mapping(table, "replaced")
    factory = _mapping(table, "factory_only")
    severity = _mapping(table, "severity")
    boundaries = _mapping(table, "boundaries")
    for name, value in {**canonical, **deprecated, **moved, **replaced}.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"[tool.atoll.ssot] {name!r} must map to a module path string")
    for name, value in factory.items():
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"[tool.atoll.ssot.factory_only] {name!r} must be a list of modules")
    for rule, level in severity.items():
        if rule not in RULES:
            raise ConfigError(f"[tool.atoll.ssot.severity] unknown rule {rule!r}")
        if level not in SEVERITIES:
            raise ConfigError(f"[tool.atoll.ssot.severity] {rule} must be one of {SEVERITIES}")
    for service, value in boundaries.items():
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"[tool.atoll.ssot.boundaries] {service!r} must be a list of modules")
    classmethods = table.get("factory_classmethods", True)
    if not isinstance(classmethods, bool):
        raise ConfigError("[tool.atoll.ssot] factory_classmethods must be true or false")
    baseline = table.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise ConfigError("[tool.atoll.ssot] baseline must be a path string")
    paths = _strings(table, "paths", (".",))
    for entry in paths:
        if not (root / entry).exists():
            raise ConfigError(f"[tool.atoll.ssot] paths: {entry!r} does not exist under {root}")
    return SsotConfig(
        root=root,
        paths=paths,
        exclude=_strings(table, "exclude", ()),
        baseline=baseline,
        auth_modules=_strings(table, "auth_modules", ()),
        canonical=dict(canonical),
        deprecated=dict(deprecated),
        moved=dict(moved),
        replaced=dict(replaced),
        factory_only={k: tuple(v) for k, v in factory.items()},
        factory_classmethods=classmethods,
        env_accessors=DEFAULT_ENV_ACCESSORS + _strings(table, "env_accessors", ()),
        boundaries={k: tuple(v) for k, v in boundaries.items()},
        severity=dict(severity),
    )
