"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, optional SPICE) through pycocoevalcap.

``caption_metrics(preds, refs)`` is a pure function of its inputs: it builds the scorers it needs unless
they are passed in (:class:`CocoScorers`, reusable across calls to avoid restarting the METEOR JVM).
SPICE needs Stanford CoreNLP 3.6.0 jars inside pycocoevalcap's ``spice/lib``; pycocoevalcap would download
them on first use, which fails offline, so SPICE is only run when the jars are already there and otherwise
reported as skipped with the reason (one line in ``result["skipped"]["SPICE"]``, for the caller to show).
What pycocoevalcap and its Java tools print is captured and shown only with ``verbose`` (``quiet.py``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from butd.evaluate.quiet import library_output

__all__ = ["CocoScorers", "caption_metrics", "ptb_tokenize", "spice_unavailable_reason"]

log = logging.getLogger(__name__)

Tokenizer = Callable[[Mapping[Any, Sequence[str]]], dict[Any, list[str]]]

_SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def spice_unavailable_reason() -> str | None:
    """None when SPICE can run offline, else a one-line reason."""
    if shutil.which("java") is None:
        return "SPICE skipped: no `java` on PATH"
    try:
        import pycocoevalcap.spice as spice_pkg
    except ImportError:  # pragma: no cover - pycocoevalcap is a hard requirement of this module
        return "SPICE skipped: pycocoevalcap is not installed"
    lib = Path(spice_pkg.__file__).parent / "lib"
    missing = [j for j in _SPICE_JARS if not (lib / j).is_file()]
    if missing:
        return (f"SPICE skipped: Stanford CoreNLP jars missing from {lib} ({', '.join(missing)}); "
                "pycocoevalcap would download them, which needs network access")
    return None


def ptb_tokenize(captions: Mapping[Any, Sequence[str]]) -> dict[Any, list[str]]:
    """PTB-tokenise (Stanford tokenizer via Java), lower-case, strip punctuation: as the COCO server."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    wrapped = {k: [{"caption": c} for c in v] for k, v in captions.items()}
    out = PTBTokenizer().tokenize(wrapped)
    return {k: out.get(k, [""] * len(v)) for k, v in captions.items()}


@dataclass
class CocoScorers:
    """The pycocoevalcap scorer objects, created once and handed to :func:`caption_metrics`."""

    scorers: list[tuple[Any, str | list[str]]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, meteor: bool = True, spice: bool = True) -> CocoScorers:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        out = cls(scorers=[(Bleu(4), ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"])])
        if meteor:
            if shutil.which("java") is None:
                out.skipped["METEOR"] = "METEOR skipped: no `java` on PATH"
            else:
                from pycocoevalcap.meteor.meteor import Meteor

                out.scorers.append((Meteor(), "METEOR"))
        out.scorers += [(Rouge(), "ROUGE-L"), (Cider(), "CIDEr")]
        if spice:
            reason = spice_unavailable_reason()
            if reason is None:
                from pycocoevalcap.spice.spice import Spice

                out.scorers.append((Spice(), "SPICE"))
            else:
                out.skipped["SPICE"] = reason
        return out


def caption_metrics(preds: Mapping[Any, str], refs: Mapping[Any, Sequence[str]], *,
                    scorers: CocoScorers | None = None,
                    tokenizer: Tokenizer | None = ptb_tokenize,
                    per_item: bool = False, verbose: bool = False) -> dict[str, Any]:
    """Corpus-level COCO caption metrics.

    Args:
        preds: image id -> generated caption (raw text).
        refs: image id -> reference captions; must contain every id of ``preds`` (extra ids are ignored).
        scorers: prebuilt scorers; default builds BLEU, METEOR, ROUGE-L, CIDEr and SPICE when available.
        tokenizer: applied to both sides (default PTB tokenizer); ``None`` when inputs are already tokenised.
        per_item: also return ``result["per_item"][metric] -> list`` in the order of ``preds``.
        verbose: show what pycocoevalcap and its Java tools print (captured otherwise, see ``quiet.py``).

    Returns:
        ``{"BLEU-1": .., .., "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", ["SPICE"], "n": N, "skipped": {..}}``.
    """
    if not preds:
        raise ValueError("caption_metrics: no predictions")
    missing = [k for k in preds if k not in refs]
    if missing:
        raise KeyError(f"caption_metrics: {len(missing)} predicted ids lack references, e.g. {missing[0]!r}")
    empty = [k for k in preds if len(refs[k]) == 0]
    if empty:
        raise ValueError(f"caption_metrics: {len(empty)} ids have an empty reference list, e.g. {empty[0]!r}")
    ids = list(preds)
    res_raw = {k: [preds[k]] for k in ids}
    gts_raw = {k: list(refs[k]) for k in ids}
    if tokenizer is not None:
        with library_output(verbose):
            res, gts = tokenizer(res_raw), tokenizer(gts_raw)
    else:
        res, gts = res_raw, gts_raw
    if scorers is None:
        scorers = CocoScorers.build()
    result: dict[str, Any] = {"n": len(ids)}
    items: dict[str, list[float]] = {}
    for scorer, names in scorers.scorers:
        with library_output(verbose):
            score, scores = scorer.compute_score(gts, res)
        if isinstance(names, list):
            for name, s, ss in zip(names, score, scores, strict=True):
                result[name] = float(s)
                items[name] = [float(x) for x in ss]
        elif names == "SPICE":
            result[names] = float(score)
            items[names] = [float(x["All"]["f"]) for x in scores]
        else:
            result[names] = float(score)
            items[names] = [float(x) for x in scores]
    result["skipped"] = dict(scorers.skipped)
    for reason in scorers.skipped.values():
        log.info(reason)  # the caller shows result["skipped"] (once), so no second copy on the terminal
    if per_item:
        result["per_item"] = items
    return result
