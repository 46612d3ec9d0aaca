"""``knowledge_search``: BM25 search over Atoll's handbook and an operator's directory.

The ``KnowledgeBase`` is built once per process and handed to tools as a
resource; the files are read and indexed off the event loop on first use.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from atoll.runtime.tools.base import ToolContext, tool

DOCUMENT_SUFFIXES = frozenset({".md", ".txt", ".rst"})
MAX_QUERY_CHARS = 2_000
MAX_QUERY_TERMS = 32
MAX_DOCUMENT_BYTES = 2_000_000
_WORD = re.compile(r"[a-z0-9]+")
_HEADING = re.compile(r"^#{1,6}\s+(.*)$", re.MULTILINE)
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i in is it me of on or the this to "
    "what when where which who why with you your about tell".split()
)


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens without stop words."""
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


def handbook_directory() -> Path:
    """The directory of the handbook pages shipped inside the package."""
    return Path(str(resources.files("atoll.runtime.tools") / "handbook"))


@dataclass(frozen=True, slots=True)
class Passage:
    """One section of one document."""

    source: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A passage with its score and a short snippet."""

    source: str
    title: str
    snippet: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        """The hit as JSON-ready data."""
        return {
            "source": self.source,
            "title": self.title,
            "snippet": self.snippet,
            "score": round(self.score, 3),
        }


def split_sections(source: str, text: str) -> list[Passage]:
    """Split a markdown document at its headings into passages."""
    passages: list[Passage] = []
    marks = list(_HEADING.finditer(text))
    if not marks:
        return [Passage(source, Path(source).stem, text.strip())] if text.strip() else []
    preface = text[: marks[0].start()].strip()
    if preface:
        passages.append(Passage(source, Path(source).stem, preface))
    for index, mark in enumerate(marks):
        end = marks[index + 1].start() if index + 1 < len(marks) else len(text)
        body = text[mark.end() : end].strip()
        if body:
            passages.append(Passage(source, mark.group(1).strip(), body))
    return passages


class KnowledgeIndex:
    """An immutable BM25 index over passages.

    Searching walks the postings of the query's terms only (at most
    ``MAX_QUERY_TERMS`` distinct ones), so its cost follows the matches, not the
    size of the corpus or the length of the question.
    """

    def __init__(self, passages: Sequence[Passage], *, k1: float = 1.5, b: float = 0.75) -> None:
        self.passages = list(passages)
        terms = [Counter(tokenize(p.title + " " + p.text)) for p in self.passages]
        lengths = [sum(t.values()) for t in terms]
        average = (sum(lengths) / len(lengths)) if lengths else 0.0
        count = len(self.passages)
        postings: dict[str, list[tuple[int, float]]] = {}
        for index, counts in enumerate(terms):
            norm = k1 * (1 - b + b * lengths[index] / (average or 1))
            for term, tf in counts.items():
                postings.setdefault(term, []).append((index, tf * (k1 + 1) / (tf + norm)))
        self._postings = {
            term: (math.log(1 + (count - len(docs) + 0.5) / (len(docs) + 0.5)), docs)
            for term, docs in postings.items()
        }

    def search(self, query: str, limit: int = 3) -> list[SearchHit]:
        """The best ``limit`` passages for ``query`` (only those sharing a term with it)."""
        words = list(dict.fromkeys(tokenize(query[:MAX_QUERY_CHARS])))[:MAX_QUERY_TERMS]
        scores: dict[int, float] = {}
        for word in words:
            idf, docs = self._postings.get(word, (0.0, []))
            for index, weight in docs:
                scores[index] = scores.get(index, 0.0) + idf * weight
        best = heapq.nsmallest(limit, ((-score, index) for index, score in scores.items()))
        return [self._hit(index, -score, words) for score, index in best]

    def _hit(self, index: int, score: float, words: Iterable[str]) -> SearchHit:
        passage = self.passages[index]
        wanted = set(words)
        paragraphs = [p.strip() for p in passage.text.split("\n\n") if p.strip()]
        best = max(paragraphs, key=lambda p: len(wanted & set(tokenize(p))), default="")
        snippet = " ".join(best.split())
        if len(snippet) > 320:
            snippet = snippet[:317].rstrip() + "…"
        return SearchHit(passage.source, passage.title, snippet, score)


def load_passages(directories: Sequence[Path]) -> list[Passage]:
    """Read every document below ``directories`` and split it into passages."""
    passages: list[Passage] = []
    for directory in directories:
        if not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*")):
            if path.suffix.lower() not in DOCUMENT_SUFFIXES or not path.is_file():
                continue
            if path.stat().st_size > MAX_DOCUMENT_BYTES:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            passages.extend(split_sections(path.relative_to(directory).as_posix(), text))
    return passages


class KnowledgeBase:
    """The searchable documents of one process: the handbook plus operator directories."""

    def __init__(self, directories: Sequence[Path] = (), *, include_handbook: bool = True) -> None:
        dirs = [handbook_directory()] if include_handbook else []
        self.directories = [*dirs, *(Path(d) for d in directories)]
        self._index: KnowledgeIndex | None = None
        self._lock = asyncio.Lock()

    async def index(self) -> KnowledgeIndex:
        """The index, built off the event loop on first use."""
        if self._index is None:
            async with self._lock:
                if self._index is None:
                    passages = await asyncio.to_thread(load_passages, self.directories)
                    self._index = KnowledgeIndex(passages)
        return self._index

    async def search(self, query: str, limit: int = 3) -> list[SearchHit]:
        """Search the documents."""
        return (await self.index()).search(query, limit)


@tool(name="knowledge_search", timeout=10.0)
async def knowledge_search(
    context: ToolContext,
    query: Annotated[str, "What to look for in Atoll's documentation and the knowledge base"],
    limit: Annotated[int, "How many passages to return (1-10)"] = 3,
) -> dict[str, Any]:
    """Search the knowledge base: Atoll's documentation and the operator's documents."""
    base = context.resource(KnowledgeBase)
    hits = await base.search(query, max(1, min(limit, 10)))
    return {"query": query, "hits": [hit.to_dict() for hit in hits]}
