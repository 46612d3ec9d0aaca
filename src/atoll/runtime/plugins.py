"""Loading operator plugins: modules with ``register(registry)`` that add agents and tools.

Plugins are named in ``ATOLL_PLUGINS`` (comma-separated module names) or exposed
through the ``atoll.plugins`` entry-point group. A plugin that cannot be
imported or registered stops start-up with a message naming it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points

from atoll.errors import ConfigurationError
from atoll.runtime.agents.base import AgentRegistry

ENTRY_POINT_GROUP = "atoll.plugins"


def _register(registry: AgentRegistry, name: str, target: object) -> None:
    register = getattr(target, "register", None)
    if not callable(register):
        raise ConfigurationError(f"plugin {name!r} has no register(registry) function")
    try:
        register(registry)
    except Exception as exc:
        raise ConfigurationError(
            f"plugin {name!r} failed to register: {type(exc).__name__}: {exc}"
        ) from exc


def load_plugins(
    registry: AgentRegistry, modules: Iterable[str], *, use_entry_points: bool = True
) -> list[str]:
    """Import each plugin and call its ``register(registry)``; returns the names loaded."""
    loaded: list[str] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise ConfigurationError(
                f"plugin {name!r} could not be imported: {type(exc).__name__}: {exc}"
            ) from exc
        _register(registry, name, module)
        loaded.append(name)
    if use_entry_points:
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            if entry.value in loaded:
                continue
            try:
                target = entry.load()
            except Exception as exc:
                raise ConfigurationError(
                    f"plugin {entry.name!r} ({entry.value}) could not be loaded: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            _register(registry, entry.name, target)
            loaded.append(entry.value)
    return loaded
