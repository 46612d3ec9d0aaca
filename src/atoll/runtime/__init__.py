"""The runtime: per-user contexts, the run lifecycle, engines, agents, tools, LLMs, events."""
