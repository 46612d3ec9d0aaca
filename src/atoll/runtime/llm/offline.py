"""The ``offline`` model: deterministic, no network, no weights — and honest about it.

It recognises arithmetic, time and knowledge questions, picks the offered tool
whose name and description fit best (real tools, or sub-agents offered by the
supervisor as functions), fills its first required text argument, and after the
tool results arrive streams an answer composed from them. Every answer says
that it comes from the offline model.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from atoll.runtime.context import UserExecutionContext
from atoll.runtime.ids import new_id
from atoll.runtime.llm.base import (
    ChatMessage,
    LLMChunk,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)

MAX_READ_CHARS = 2_000
"""The offline model reads at most this much of a question (a small context, like a small
model's): a 32,000-character message costs what a 2,000-character one does."""
OFFLINE_NOTE = "(Answered by Atoll's offline model: deterministic, no language model connected.)"

_ARITHMETIC_WORDS = (
    (re.compile(r"\bmultiplied by\b|\btimes\b", re.I), "*"),
    (re.compile(r"\bdivided by\b|\bover\b", re.I), "/"),
    (re.compile(r"\bplus\b", re.I), "+"),
    (re.compile(r"\bminus\b", re.I), "-"),
    (re.compile(r"\bto the power of\b", re.I), "**"),
)
_FUNCTIONS = frozenset("sqrt abs round log log10 exp sin cos tan floor ceil".split())
_CONSTANTS = frozenset({"pi", "tau", "e"})
_TOKEN = re.compile(
    r"(?P<num>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_]\w*)|(?P<op>\*\*|[-+*/%^×÷])"
    r"|(?P<open>\()|(?P<close>\))|(?P<space>\s+)|(?P<other>.)",
    re.DOTALL,
)
"""One token per match, no nested repetition: scanning a message is linear in its length
(the regular expression this replaces backtracked: 28 s on a 32 KB message)."""
_TIME = re.compile(r"\b(time|clock|date|today|day is it|what day|now)\b", re.I)
_GREETING = re.compile(
    r"^\s*(hi|hello|hey|thanks|thank you|good (morning|evening|afternoon))\b", re.I
)
_ZONE = re.compile(r"\b([A-Z][a-z]+/[A-Z][A-Za-z_]+)\b")

INTENT_KEYWORDS: Mapping[str, tuple[str, ...]] = {
    "arithmetic": ("calculat", "arithmetic", "math"),
    "time": ("time", "clock", "date"),
    "knowledge": ("knowledge", "search", "documentation", "docs"),
}
_REASONS = {
    "arithmetic": "This is an arithmetic question, so I will compute it with a tool.",
    "time": "This asks for the current time, so I will check the clock.",
    "knowledge": "This is a question about the documentation, so I will search it.",
}


@dataclass(frozen=True, slots=True)
class Intent:
    """What the offline model understood a question to be."""

    kind: str
    payload: str


def extract_expression(text: str) -> str | None:
    """The longest arithmetic expression in ``text`` that has an operator, if any.

    Numbers, the calculator's constants (``pi``, ``tau``, ``e``) and functions,
    operators and parentheses form runs; anything else ends a run. A run counts
    when an operand (or a closing parenthesis) is followed by an operator and it
    ends with an operand: ``sqrt(2) * pi + 10**20`` is one expression.
    """
    rewritten = text
    for pattern, symbol in _ARITHMETIC_WORDS:
        rewritten = pattern.sub(f" {symbol} ", rewritten)
    best: str | None = None
    run: list[tuple[str, str, int, int]] = []

    def close_run() -> None:
        nonlocal best
        first, last = 0, len(run) - 1  # trimmed by index: linear, whatever the input
        while first <= last and (
            run[first][0] == "close" or (run[first][0] == "op" and run[first][1] not in "-+")
        ):
            first += 1
        while last >= first and run[last][0] in ("op", "open", "func"):
            last -= 1
        seen_operand = operator_after_operand = False
        for kind, _, _, _ in run[first : last + 1]:
            if kind in ("operand", "close"):
                seen_operand = True
            elif kind == "op" and seen_operand:
                operator_after_operand = True
                break
        if operator_after_operand:
            candidate = " ".join(rewritten[run[first][2] : run[last][3]].split())
            if best is None or len(candidate) > len(best):
                best = candidate
        run.clear()

    for match in _TOKEN.finditer(rewritten):
        group = match.lastgroup
        value = match.group()
        if group == "space":
            continue
        if group == "num" or (group == "name" and value in _CONSTANTS):
            kind = "operand"
        elif group == "name" and value in _FUNCTIONS:
            kind = "func"
        elif group in ("op", "open", "close"):
            kind = str(group)
        else:
            close_run()
            continue
        run.append((kind, value, match.start(), match.end()))
    close_run()
    return best


def classify(question: str) -> Intent:
    """Arithmetic, time, greeting or knowledge — decided by simple, documented rules."""
    expression = extract_expression(question)
    if expression:
        return Intent("arithmetic", expression)
    if _GREETING.match(question):
        return Intent("greeting", question)
    if _TIME.search(question):
        zone = _ZONE.search(question)
        return Intent("time", zone.group(1) if zone else "")
    return Intent("knowledge", question.strip())


def _score(spec: ToolSpec, intent: str) -> int:
    text = f"{spec.name} {spec.description}".lower()
    return sum(text.count(word) for word in INTENT_KEYWORDS.get(intent, ()))


def choose_tool(tools: Sequence[ToolSpec], intent: Intent) -> ToolSpec | None:
    """The offered tool that fits ``intent`` best, or None when none mentions it."""
    best: tuple[int, ToolSpec] | None = None
    for spec in tools:
        score = _score(spec, intent.kind)
        if score > 0 and (best is None or score > best[0]):
            best = (score, spec)
    return best[1] if best else None


def fill_arguments(spec: ToolSpec, intent: Intent, question: str) -> dict[str, Any]:
    """Arguments for ``spec``: its first required string gets the question — or, for an
    ``expression`` parameter, just the arithmetic expression; a time zone goes to ``timezone``.
    """
    properties: Mapping[str, Any] = spec.parameters.get("properties", {})
    required: Sequence[str] = spec.parameters.get("required", [])
    arguments: dict[str, Any] = {}
    for name in required:
        if properties.get(name, {}).get("type") == "string":
            expression = intent.kind == "arithmetic" and name == "expression"
            arguments[name] = intent.payload if expression else question
            break
    if intent.kind == "time" and intent.payload and "timezone" in properties:
        arguments["timezone"] = intent.payload
    return arguments


def describe_result(tool_name: str, content: str) -> str:
    """A sentence or two for one tool result (built-in tools get a tailored phrasing)."""
    try:
        message = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content.strip()
    if not isinstance(message, dict):
        return content.strip()
    if not message.get("ok", True):
        error = message.get("error") or {}
        return f"The {tool_name} tool failed: {error.get('message', 'unknown error')}."
    result = message.get("result", message)
    if tool_name == "calculator" and isinstance(result, dict):
        return f"{result.get('expression')} = {result.get('value')}"
    if tool_name == "current_time" and isinstance(result, dict):
        return (
            f"It is {result.get('time')} on {result.get('weekday')}, {result.get('date')} "
            f"({result.get('timezone')})."
        )
    if tool_name == "knowledge_search" and isinstance(result, dict):
        hits = result.get("hits") or []
        if not hits:
            return "I found nothing about that in the knowledge base."
        lines = ["Here is what the knowledge base says:"]
        lines += [f"- {hit['title']}: {hit['snippet']} ({hit['source']})" for hit in hits]
        return "\n".join(lines)
    if isinstance(result, str):
        return result.strip()
    return orjson.dumps(result).decode()


def compose_answer(messages: Sequence[ChatMessage]) -> str:
    """An answer from the tool results that follow the last assistant tool-call message."""
    names: dict[str, str] = {}
    parts: list[str] = []
    for message in messages:
        if message.role == "assistant" and message.tool_calls:
            names = {call.id: call.name for call in message.tool_calls}
            parts = []
        elif message.role == "tool":
            tool_name = names.get(message.tool_call_id or "", message.name or "tool")
            parts.append(describe_result(tool_name, message.content))
    text = "\n\n".join(p for p in parts if p)
    if OFFLINE_NOTE in text:
        return text
    return f"{text}\n\n{OFFLINE_NOTE}"


def direct_answer(intent: Intent, tools_offered: bool) -> str:
    """The answer when no tool fits (or none is offered)."""
    if intent.kind == "greeting":
        return (
            "Hello! I am Atoll's offline model. I can do arithmetic with the calculator, "
            f"tell the time and search Atoll's documentation. {OFFLINE_NOTE}"
        )
    needed = {"arithmetic": "the calculator", "time": "the clock", "knowledge": "the search"}
    reason = "no tool for it is available to you" if tools_offered else "no tools were offered"
    return (
        f"I am Atoll's offline model and need {needed.get(intent.kind, 'a tool')} to answer "
        f"that, but {reason}. Connect a language model (ATOLL_LLM_PROVIDER=openai) for "
        f"open-ended chat. {OFFLINE_NOTE}"
    )


def chunk_words(text: str, words_per_chunk: int = 3) -> list[str]:
    """Split text into streaming pieces of a few words, whitespace kept."""
    tokens = re.findall(r"\S+\s*|\s+", text)
    return [
        "".join(tokens[i : i + words_per_chunk]) for i in range(0, len(tokens), words_per_chunk)
    ]


def _last_user_text(messages: Sequence[ChatMessage]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return ""


class OfflineClient:
    """A per-run client of the offline model."""

    model = "atoll-offline"

    def __init__(self, *, token_delay: float = 0.0) -> None:
        self._token_delay = token_delay

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice | None = None,
    ) -> AsyncIterator[LLMChunk]:
        """Decide deterministically: call a tool, or stream an answer."""
        question = _last_user_text(messages)[:MAX_READ_CHARS]
        prompt_tokens = sum(len(m.content.split()) for m in messages)
        if messages and messages[-1].role == "tool":
            answer = compose_answer(messages)
        else:
            intent = classify(question)
            spec = choose_tool(tools, intent) if tool_choice != "none" else None
            if spec is not None:
                yield ReasoningDelta(_REASONS.get(intent.kind, "I will use a tool for this."))
                arguments = fill_arguments(spec, intent, question)
                yield ToolCall(new_id("call"), spec.name, orjson.dumps(arguments).decode())
                yield Usage(prompt_tokens, 1 + len(arguments))
                return
            answer = direct_answer(intent, bool(tools))
        # Like a real model, give the event loop back before answering and between
        # chunks, so one run never starves the others or the monitor. With a delay, the
        # chunks are due at a steady pace from the start, as a provider sends them: a
        # busy server that reads one late gets the next sooner, not everything later.
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        due = loop.time()
        for piece in chunk_words(answer):
            if self._token_delay:
                due += self._token_delay
                await asyncio.sleep(max(0.0, due - loop.time()))
            yield TextDelta(piece)
        yield Usage(prompt_tokens, len(answer.split()))


class OfflineProvider:
    """Hands out offline clients; nothing to connect or close."""

    name = "offline"

    def __init__(self, *, token_delay: float = 0.0) -> None:
        self.token_delay = token_delay

    def client(self, context: UserExecutionContext) -> OfflineClient:
        """A fresh offline client for one run."""
        return OfflineClient(token_delay=self.token_delay)

    async def aclose(self) -> None:
        """Nothing to release."""
