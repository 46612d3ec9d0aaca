"""Tools: the ``@tool`` decorator, the per-run dispatcher and the built-in tools."""
