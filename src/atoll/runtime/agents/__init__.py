"""Agents: the ``Agent`` base class, the registry and factory, and the built-in agents."""
