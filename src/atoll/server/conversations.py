"""Conversations that other protocols send whole (OpenAI's chat completions, AG-UI's
``RunAgentInput``): what of them becomes the run's input and what is stored before it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

STORED_ROLES = ("user", "assistant")
"""The roles stored in a thread: system, developer and tool messages are not (an Atoll
agent keeps its own instructions and runs its own tools)."""


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the ``text`` of each part of a list
    (parts without text, such as images, are left out)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(getattr(part, "text", None) or "") for part in content)
    return ""


def split_conversation(messages: Iterable[tuple[str, Any]]) -> tuple[str, list[tuple[str, str]]]:
    """From (role, content) pairs: the text of the last user message (``""`` when there is
    none), and the non-empty user and assistant messages before it, oldest first.
    Messages after the last user message (an assistant "prefill") are ignored."""
    pairs = list(messages)
    last = max((i for i, (role, _) in enumerate(pairs) if role == "user"), default=None)
    if last is None:
        return "", []
    earlier = [
        (role, text)
        for role, content in pairs[:last]
        if role in STORED_ROLES and (text := text_of(content))
    ]
    return text_of(pairs[last][1]), earlier
