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
    factory_only: dict[str, tuple[str, ...]] = field(default_factory=dict)
    severity: dict[str, str] = field(default_factory=dict)

    def severity_of(self, rule: str) -> str:
        """``error`` unless overridden."""
        return self.severity.get(rule, "error")

    def fingerprint(self) -> str:
        """A hash of everything that changes findings (part of the cache key)."""
        data = {
            "exclude": self.exclude,
            "auth": self.auth_modules,
            "canonical": self.canonical,
            "deprecated": self.deprecated,
            "factory": self.factory_only,
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
    """Read the configuration of the project at ``root`` (defaults when there is none)."""
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
    canonical = _mapping(table, "canonical")
    deprecated = _mapping(table, "deprecated")
    factory = _mapping(table, "factory_only")
    severity = _mapping(table, "severity")
    for name, value in {**canonical, **deprecated}.items():
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
    baseline = table.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise ConfigError("[tool.atoll.ssot] baseline must be a path string")
    return SsotConfig(
        root=root,
        paths=_strings(table, "paths", (".",)),
        exclude=_strings(table, "exclude", ()),
        baseline=baseline,
        auth_modules=_strings(table, "auth_modules", ()),
        canonical=dict(canonical),
        deprecated=dict(deprecated),
        factory_only={k: tuple(v) for k, v in factory.items()},
        severity=dict(severity),
    )
