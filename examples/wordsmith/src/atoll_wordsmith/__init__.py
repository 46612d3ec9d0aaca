"""atoll-wordsmith: an example Atoll plugin (docs/extending.md walks through it).

Installing the package is enough: its ``atoll.plugins`` entry point names this
module, and Atoll calls ``register(registry)`` at start-up.
"""

from __future__ import annotations

from atoll import AgentRegistry
from atoll_wordsmith.agent import WordsmithAgent
from atoll_wordsmith.tools import TOOLS


def register(registry: AgentRegistry) -> None:
    """Add the wordsmith agent and its tools."""
    registry.register_agent(WordsmithAgent)
    registry.register_tools(TOOLS)
