"""Caption diagnostics: the defects BLEU and CIDEr do not show.

* ``repeat``: share of captions that use some word twice, words of the allowed list excepted (the run's
  ``decode.allowed_repeats``: by default the Caffe Up-Down decoder's ``allowed_multiple``,
  ``butd.models.decoding.CAFFE_ALLOWED_REPEATS``);
* ``bad_ending``: share of captions whose last word cannot end a sentence (:data:`BAD_ENDINGS`: articles,
  prepositions, "is", ... as self-critical.pytorch lists them for its ``remove_bad_endings`` option:
  ruotianluo/self-critical.pytorch ``captioning/models/AttModel.py`` ``bad_endings`` at 4c48a33);
* ``mean_length``: words per caption; ``empty``: share of captions without a word;
* ``vocabulary``: distinct words over all captions;
* ``in_training``: share of captions that appear verbatim among the training captions (a copied caption),
  compared as lower-case words without punctuation (Karpathy tokens).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["BAD_ENDINGS", "caption_diagnostics", "words_of"]

BAD_ENDINGS = ("a", "an", "the", "in", "for", "at", "of", "with", "before", "after", "on", "upon", "near", "to",
               "is", "are", "am")


def words_of(caption: str) -> tuple[str, ...]:
    """Karpathy-style words: lower-case, punctuation removed, split on whitespace."""
    return tuple(re.sub(r"[^\w\s]", "", caption.lower()).split())


def caption_diagnostics(captions: Mapping[Any, str], training: Iterable[str | Sequence[str]] | None = None, *,
                        allowed_repeats: Sequence[str], bad_endings: Sequence[str] = BAD_ENDINGS) -> dict[str, Any]:
    """Diagnostics of ``captions`` (id -> caption); ``training``: the training captions (strings or token
    lists), without which ``in_training`` is None; ``allowed_repeats``: words that may repeat (a run's
    ``decode.allowed_repeats``, Caffe's list by default). Shares are fractions in [0, 1]; ``examples`` names
    up to three captions of each defect."""
    if not captions:
        raise ValueError("no captions")
    allowed, ends = set(allowed_repeats), set(bad_endings)
    seen = None if training is None else {words_of(t) if isinstance(t, str) else tuple(w.lower() for w in t)
                                          for t in training}
    repeats, bad, copied, empty, lengths, vocab = [], [], [], [], [], set()
    for key, caption in captions.items():
        words = words_of(caption)
        lengths.append(len(words))
        if not words:
            empty.append(key)
        vocab.update(words)
        content = [w for w in words if w not in allowed]
        if len(content) != len(set(content)):
            repeats.append(key)
        if words and words[-1] in ends:
            bad.append(key)
        if seen is not None and words in seen:
            copied.append(key)
    n = len(captions)
    return {"repeat": len(repeats) / n, "bad_ending": len(bad) / n, "mean_length": sum(lengths) / n,
            "vocabulary": len(vocab), "in_training": None if seen is None else len(copied) / n,
            "empty": len(empty) / n, "n_captions": n,
            "examples": {"repeat": repeats[:3], "bad_ending": bad[:3], "in_training": copied[:3]}}
