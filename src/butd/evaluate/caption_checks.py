"""The evaluation steps a caption eval adds to the COCO metrics: diagnostics, CHAIR, per-word grounding.

Each is a pure function of captions, references and files, so a task's ``evaluate`` calls it in a line:

* :func:`hallucination_inputs`: the CHAIR word list and the instance annotations to use (the given files,
  else those the captions file's folder holds in the COCO layout, as the toy world writes them);
* :func:`caption_checks`: diagnostics always, CHAIR when instances exist (else a reason in ``skipped``);
* :func:`grounding_report`: per-word top-k regions and the grounding measures of a split.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from butd.evaluate.chair import ChairWords, chair, ground_truth_objects, load_chair_words, load_instances
from butd.evaluate.diagnostics import caption_diagnostics
from butd.evaluate.grounding import ground_caption, grounding_summary, load_box_file, record_boxes

__all__ = ["HallucinationInputs", "caption_checks", "checks_lines", "grounding_report", "hallucination_inputs"]

Boxes = dict[str, list[tuple[str, tuple[float, ...]]]]


@dataclass(frozen=True)
class HallucinationInputs:
    """What CHAIR and grounding measure against: the word list, instance boxes (image id -> [(name, box)])."""

    words: ChairWords
    instances: Mapping[str, Sequence[tuple[str, Any]]] = field(default_factory=dict)
    instance_files: tuple[str, ...] = ()
    boxes: Boxes | None = None  # a --boxes file's (object, box) per image, for grounding

    def truth_boxes(self, image_id: str) -> list[tuple[str, Any]]:
        """(object, box) of an image: the box file's, else the instances' mapped through the word list."""
        if self.boxes is not None:
            return list(self.boxes.get(image_id, ()))
        return [(self.words.category_object(name, ", ".join(self.instance_files)), box)
                for name, box in self.instances.get(image_id, ())]


def hallucination_inputs(captions_file: str | Path, instances: Iterable[str | Path] = (),
                         chair_words: str | Path | None = None, boxes: str | Path | None = None) -> HallucinationInputs:
    """Read the files CHAIR and grounding need. Without ``instances``, ``annotations/instances_*.json`` beside
    the captions file (COCO layout) are used if present; without ``chair_words``, ``chair_words.json``
    beside it, else the shipped COCO list."""
    folder = Path(captions_file).parent
    files = [Path(p) for p in instances] or sorted((folder / "annotations").glob("instances_*.json"))
    if chair_words is None and (folder / "chair_words.json").is_file():
        chair_words = folder / "chair_words.json"
    words = load_chair_words(chair_words)
    box_map = load_box_file(boxes, words) if boxes is not None else None
    inst = load_instances(files) if files else {}
    for name in sorted({name for found in inst.values() for name, _ in found}):  # every category known, up front
        words.category_object(name, ", ".join(map(str, files)))
    return HallucinationInputs(words, inst, tuple(map(str, files)), box_map)


def caption_checks(preds: Mapping[str, str], references: Mapping[str, Sequence[str]],
                   training: Iterable[str | Sequence[str]] | None, *, allowed_repeats: Sequence[str],
                   inputs: HallucinationInputs | None) -> tuple[dict[str, Any], dict[str, str], dict[str, list[str]]]:
    """(metrics, skipped reasons, image id -> hallucinated words) for a split's captions.

    ``metrics`` has ``diagnostics`` and, with instance annotations, ``chair`` (CHAIR_s, CHAIR_i,
    object_recall, mentions, hallucinated, words, instances)."""
    metrics: dict[str, Any] = {"diagnostics": caption_diagnostics(preds, training, allowed_repeats=allowed_repeats)}
    skipped: dict[str, str] = {}
    hallucinated: dict[str, list[str]] = {}
    if inputs is None or not inputs.instance_files:
        skipped["CHAIR"] = "CHAIR skipped: no instance annotations (pass --instances instances_val2014.json)"
        return metrics, skipped, hallucinated
    truth = ground_truth_objects(preds, inputs.instances, references, inputs.words, ", ".join(inputs.instance_files))
    res = chair(preds, truth, inputs.words)
    hallucinated = {k: v["hallucinated"] for k, v in res.pop("per_caption").items()}
    metrics["chair"] = {**res, "instances": list(inputs.instance_files)}
    return metrics, skipped, hallucinated


def grounding_report(words: Mapping[str, Sequence[str]], attention: Mapping[str, np.ndarray],
                     records: Mapping[str, Mapping[str, Any]], inputs: HallucinationInputs | None, *,
                     labels: Mapping[str, Sequence[str]] | None = None, k: int = 3,
                     where: Any = "--attention") -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, per image {"caption", "words": [...]}) for captions ``words`` (image id -> words), their
    attention (image id -> [T, K] over the record's first K rows) and the store ``records``."""
    per_image: dict[str, Any] = {}
    grounded: dict[str, list[dict]] = {}
    for image_id, ws in words.items():
        att = np.asarray(attention[image_id], np.float64)
        boxes = record_boxes(records[image_id], att.shape[1], where)
        truth = inputs.truth_boxes(image_id) if inputs is not None else []
        grounded[image_id] = ground_caption(list(ws), att, boxes, inputs.words if inputs else None, truth,
                                            (labels or {}).get(image_id, ()), k)
        per_image[image_id] = {"caption": " ".join(ws), "words": grounded[image_id]}
    summary = grounding_summary(grounded)
    summary["top_k"] = k
    return summary, per_image


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def checks_lines(report: Mapping[str, Any]) -> list[str]:
    """The lines `butd eval` prints for the extra steps of a caption eval report (percentages)."""
    lines = []
    if "chair" in report:
        c = report["chair"]
        lines.append(f"CHAIR-s {_pct(c['CHAIR_s'])}  CHAIR-i {_pct(c['CHAIR_i'])}  object recall "
                     f"{_pct(c['object_recall'])}  ({c['hallucinated']} of {c['mentions']} object mentions "
                     f"hallucinated; words: {c['words']})")
    if "grounding" in report:
        g = report["grounding"]
        lines.append(f"grounding accuracy {_pct(g['grounding_accuracy'])}  attention correctness "
                     f"{_pct(g['attention_correctness'])}  ({g['grounded_mentions']} mentions with boxes)")
    if "diagnostics" in report:
        d = report["diagnostics"]
        copied = "-" if d["in_training"] is None else _pct(d["in_training"])
        lines.append(f"repeats {_pct(d['repeat'])}%  bad endings {_pct(d['bad_ending'])}%  mean length "
                     f"{d['mean_length']:.1f}  vocabulary {d['vocabulary']}  copied from training {copied}%")
    return lines
