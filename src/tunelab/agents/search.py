"""BM25 retrieval over a local corpus (``bm25s``: sparse-matrix BM25, Lucene's scoring),
for the ``search`` tool and retrieval-augmented answering. Passages come from a file (JSONL
rows with ``text`` and optionally ``id``, or plain text, one passage per paragraph) or
from a built-in dataset's passages (BoolQ's)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.loading import builtin_path, iter_records
from tunelab.errors import DataError


@dataclass(frozen=True)
class Passage:
    id: str
    text: str


@dataclass(frozen=True)
class Hit:
    id: str
    text: str
    score: float


class SearchIndex:
    """English stop words removed, lower-cased words of two or more characters (bm25s'
    default tokenizer, no stemming)."""

    def __init__(self, passages: Sequence[Passage]):
        import bm25s

        if not passages:
            raise DataError("the search corpus is empty")
        self.passages = list(passages)
        self._retriever = bm25s.BM25()
        self._retriever.index(self._tokenize([p.text for p in self.passages]), show_progress=False)

    @staticmethod
    def _tokenize(texts: list[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)

    def search(self, query: str, k: int = 3) -> list[Hit]:
        """The ``k`` best passages for ``query`` with a positive score, best first."""
        k = min(k, len(self.passages))
        if k < 1 or not query.strip():
            return []
        tokens = self._tokenize([query])
        if not tokens[0]:  # only stop words
            return []
        found, scores = self._retriever.retrieve(tokens, k=k, show_progress=False)
        return [Hit(self.passages[i].id, self.passages[i].text, float(s))
                for i, s in zip(found[0], scores[0]) if s > 0]


def passages_from_file(path: str | Path) -> list[Passage]:
    """JSONL/CSV/Parquet rows with a ``text`` field (``id`` optional), or a text file whose
    paragraphs (separated by blank lines) are the passages."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such corpus file: {path}")
    if path.suffix in (".txt", ".md"):
        paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
        return [Passage(f"{path.name}:{n}", text) for n, text in enumerate(paragraphs, 1)]
    passages = []
    for where, row in iter_records(path):
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise DataError(f"{where}: a corpus row needs a non-empty 'text' field")
        passages.append(Passage(str(row.get("id", where)), row["text"]))
    return passages


def boolq_passages(split: str = "val") -> list[Passage]:
    """Every distinct passage of BoolQ's split, in file order, with its first row as id."""
    seen: dict[str, Passage] = {}
    for n, (_, row) in enumerate(iter_records(builtin_path("boolq", split))):
        seen.setdefault(row["passage"], Passage(f"boolq:{n}", row["passage"]))
    return list(seen.values())
