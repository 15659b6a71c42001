"""The one vocabulary class of both tasks: words seen at least ``min_count`` times in training text.

Caption vocabularies start with ``<pad> <bos> <eos> <unk>`` (ids 0-3), question vocabularies (VQA) with
``<pad> <unk>`` (ids 0-1); unknown words map to ``<unk>``. Both are saved as one vocab.json schema.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BOS", "EOS", "PAD", "SPECIALS", "UNK", "Vocab", "read_words", "tokens_to_text", "write_words"]

PAD, BOS, EOS, UNK = 0, 1, 2, 3
_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
SPECIALS = {"caption": _SPECIALS, "question": ("<pad>", "<unk>")}  # kind -> the words every vocabulary starts with


class Vocab:
    """Word <-> id table of one ``kind``: "caption" (``PAD=0, BOS=1, EOS=2, UNK=3``) or "question" (0, 1)."""

    def __init__(self, words: Sequence[str], kind: str = "caption") -> None:
        if kind not in SPECIALS:
            raise ValueError(f"unknown vocabulary kind {kind!r} (known: {', '.join(SPECIALS)})")
        specials = SPECIALS[kind]
        if tuple(words[: len(specials)]) != specials:
            raise ValueError(f"a {kind} vocabulary must start with the special tokens {specials}")
        if len(set(words)) != len(words):
            raise ValueError("duplicate words in vocabulary")
        self.kind = kind
        self.words: list[str] = list(words)
        self.index: dict[str, int] = {w: i for i, w in enumerate(self.words)}
        self.unk = self.index["<unk>"]

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 5, kind: str = "caption") -> Vocab:
        """Words with ``>= min_count`` occurrences, most frequent first (ties alphabetical)."""
        counts = Counter(w for toks in token_lists for w in toks)
        specials = SPECIALS.get(kind, ())
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in specials),
                      key=lambda w: (-counts[w], w))
        return cls([*specials, *kept], kind)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def ids(self, tokens: Sequence[str]) -> list[int]:
        """The id of every token; unknown words become ``<unk>``."""
        return [self.index.get(w, self.unk) for w in tokens]

    def encode(self, tokens: Sequence[str], max_len: int) -> list[int]:
        """Caption form ``[BOS, w_1 .. w_n, EOS]`` with ``n = min(len(tokens), max_len)``."""
        if self.kind != "caption":
            raise ValueError(f"a {self.kind} vocabulary has no BOS/EOS; use encode_padded")
        return [BOS, *self.ids(tokens[:max_len]), EOS]

    def encode_padded(self, tokens: Sequence[str], max_len: int) -> np.ndarray:
        """int64 [max_len]: ids of the first ``max_len`` tokens, right-padded with PAD (0)."""
        ids = self.ids(tokens[:max_len])
        return np.asarray(ids + [PAD] * (max_len - len(ids)), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first EOS (BOS and PAD skipped), joined by spaces."""
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            out.append(self.words[i] if 0 <= i < len(self.words) else _SPECIALS[UNK])
        return " ".join(out)

    def to_json(self) -> dict:
        return {"format": "butd-vocab", "version": 1, "kind": self.kind, "words": self.words}

    def save(self, path: str | Path) -> None:
        write_words(path, self.words, self.kind)

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        words = read_words(path)  # checks the file first
        return cls(words, json.loads(Path(path).read_text(encoding="utf-8")).get("kind", "caption"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and (self.kind, self.words) == (other.kind, other.words)

    def __repr__(self) -> str:
        return f"Vocab({self.kind}, {len(self)} words)"


def tokens_to_text(tokens: Any, vocab: Vocab) -> list[str]:
    """Decoded captions of token rows [N, T] (a tensor or nested lists; each stops at EOS)."""
    rows = tokens.tolist() if hasattr(tokens, "tolist") else tokens
    return [vocab.decode(row) for row in rows]


def write_words(path: str | Path, words: Sequence[str], kind: str) -> None:
    """vocab.json of every run (RUNS.md): ``{"format": "butd-vocab", "version": 1, "kind", "words"}``.

    ``kind`` is "caption" (specials <pad> <bos> <eos> <unk>) or "question" (VQA: <pad> <unk>).
    """
    obj = {"format": "butd-vocab", "version": 1, "kind": kind, "words": list(words)}
    Path(path).write_text(json.dumps(obj, indent=0), encoding="utf-8")


def read_words(path: str | Path) -> list[str]:
    """The word list of a vocab.json written by :func:`write_words`."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
        words = obj["words"]
        if obj.get("format") != "butd-vocab" or not isinstance(words, list):
            raise TypeError("no butd-vocab words list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a butd vocabulary JSON ({type(exc).__name__}: {exc})") from None
    return [str(w) for w in words]
