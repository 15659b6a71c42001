"""Caption vocabulary: words seen at least ``min_count`` times in training captions, the rest map to UNK."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["BOS", "EOS", "PAD", "UNK", "Vocab", "read_words", "write_words"]

PAD, BOS, EOS, UNK = 0, 1, 2, 3
_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


class Vocab:
    """Word <-> id table with fixed special ids ``PAD=0, BOS=1, EOS=2, UNK=3``."""

    def __init__(self, words: Sequence[str]) -> None:
        if tuple(words[: len(_SPECIALS)]) != _SPECIALS:
            raise ValueError(f"a vocabulary must start with the special tokens {_SPECIALS}")
        if len(set(words)) != len(words):
            raise ValueError("duplicate words in vocabulary")
        self.words: list[str] = list(words)
        self.index: dict[str, int] = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 5) -> Vocab:
        """Words with ``>= min_count`` occurrences, most frequent first (ties alphabetical)."""
        counts = Counter(w for toks in token_lists for w in toks)
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in _SPECIALS),
                      key=lambda w: (-counts[w], w))
        return cls([*_SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def encode(self, tokens: Sequence[str], max_len: int) -> list[int]:
        """``[BOS, w_1 .. w_n, EOS]`` with ``n = min(len(tokens), max_len)``; unknown words become UNK."""
        ids = [self.index.get(w, UNK) for w in tokens[:max_len]]
        return [BOS, *ids, EOS]

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
        return {"format": "butd-vocab", "version": 1, "kind": "caption", "words": self.words}

    def save(self, path: str | Path) -> None:
        write_words(path, self.words, "caption")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        return cls(read_words(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.words == other.words

    def __repr__(self) -> str:
        return f"Vocab({len(self)} words)"


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
