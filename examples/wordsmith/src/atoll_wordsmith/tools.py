"""The plugin's tools: typed functions; the JSON Schema the model sees comes from the hints."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from atoll import ToolContext, ToolError, tool

WORD = re.compile(r"[\w'-]+")


@tool(timeout=5)
def text_stats(text: Annotated[str, "The text to measure"]) -> dict[str, int | str]:
    """Count the words and sentences of a text and find its longest word.

    A plain ``def``: CPU work, so Atoll runs it in a worker process that the timeout
    can kill; it never blocks the server's event loop, whatever text a user sends.
    """
    words = WORD.findall(text)
    if not words:
        raise ToolError("there are no words in this text")  # the model and the user see this
    sentences = [s for s in re.split(r"[.!?]+", text) if s.strip()]
    return {
        "words": len(words),
        "sentences": len(sentences),
        "longest": max(words, key=len),
    }


@tool(roles=["editor"])
async def house_style(
    style: Literal["plain", "formal"],
    context: ToolContext,
) -> dict[str, str]:
    """The house style guide's rule for a style (only for users with the ``editor`` role).

    An ``async def``: it may only wait (I/O), never compute for long. ``context`` is the
    caller's: their user id, plan and roles; it is not part of the schema.
    """
    rules = {
        "plain": "Short sentences. Common words. One idea per sentence.",
        "formal": "Full sentences. No contractions. Define every term.",
    }
    return {"style": style, "rule": rules[style], "for": context.user.user_id}


TOOLS = (text_stats, house_style)
