"""VQA v2 data: questions + annotations, answer candidates with official soft scores, store-joined dataset.

Layout read: ``{"questions": [{"question_id", "image_id", "question"}]}`` and
``{"annotations": [{"question_id", "image_id", "question_type", "answer_type", "multiple_choice_answer",
"answers": [{"answer", ...} x 10]}]}``. Several (questions, annotations) file pairs can be given (extra QA).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from butd.datasets.json_list import NotAListError, read_list
from butd.datasets.vocab import Vocab
from butd.errors import UserError
from butd.evaluate.vqa_accuracy import ANSWER_TYPES, normalize_answer, soft_scores
from butd.shards import FeatureStore, scalar

ANSWER_SOURCES = ("train", "train+val")

__all__ = [
    "ANSWER_SOURCES",
    "PAD",
    "UNK",
    "MissingImagesError",
    "VQADataConfig",
    "VQADataset",
    "VQAExample",
    "Vocab",
    "build_question_vocab",
    "encode_question",
    "build_answer_set",
    "candidate_examples",
    "compared_forms",
    "featurize",
    "join_store",
    "load_vqa",
    "soft_target",
    "synthetic_record",
    "tokenize_question",
]

PAD, UNK = "<pad>", "<unk>"
N_HUMAN_ANSWERS = 10


@dataclass(frozen=True)
class VQADataConfig:
    """How questions, answers and regions become tensors."""

    max_question_len: int = 14
    min_answer_count: int = 9
    # which annotated questions count towards candidates: "train" (default: nothing about the scored split
    # leaks into the model) or "train+val" (bottom-up-attention-vqa tools/compute_softscore.py: 3129 on VQA v2)
    answers_from: str = "train"
    max_boxes: int | None = None  # None: the store's largest record
    skip_missing: bool = False


@dataclass(frozen=True)
class VQAExample:
    """One question; ``answers`` are the raw human answers (empty when unannotated)."""

    question_id: int
    image_id: int
    question: str
    question_type: str = ""
    answer_type: str = ""
    answers: tuple[str, ...] = ()
    mc_answer: str | None = None


class MissingImagesError(ValueError):
    """Questions refer to images that the feature store does not hold."""


def _paths(p: str | Path | Sequence[str | Path] | None) -> list[Path]:
    if p is None:
        return []
    return [Path(p)] if isinstance(p, str | Path) else [Path(x) for x in p]


def _read_json(path: Path, key: str) -> Iterator[dict[str, Any]]:
    """The entries of the file's top-level ``key`` list, parsed one at a time (VQA v2 train: 4.9M objects)."""
    try:
        yield from read_list(path, key)
    except NotAListError:
        raise ValueError(f"{path}: not a VQA {key} file (no top-level {key!r} list)") from None


def _kept(ann: dict[str, Any]) -> tuple[str, str, tuple[str, ...], Any]:
    """What an example keeps of its annotation; repeated strings (types, answers) share one object."""
    mc = ann.get("multiple_choice_answer")
    return (sys.intern(str(ann.get("question_type", ""))), sys.intern(str(ann["answer_type"])),
            tuple(sys.intern(str(a["answer"])) for a in ann["answers"]), sys.intern(mc) if type(mc) is str else mc)


def _check_annotation(ann: dict[str, Any], path: Path) -> None:
    qid = ann.get("question_id")
    answers = ann.get("answers")
    if not isinstance(answers, list) or len(answers) != N_HUMAN_ANSWERS:
        n = len(answers) if isinstance(answers, list) else 0
        raise ValueError(f"{path}: question_id {qid} has {n} answers, expected {N_HUMAN_ANSWERS}")
    if ann.get("answer_type") not in ANSWER_TYPES:
        raise ValueError(
            f"{path}: question_id {qid} has unknown answer_type {ann.get('answer_type')!r} "
            f"(expected one of {', '.join(ANSWER_TYPES)})"
        )


def load_vqa(
    questions: str | Path | Sequence[str | Path], annotations: str | Path | Sequence[str | Path] | None = None
) -> list[VQAExample]:
    """Read question files (and matching annotation files, if given) into examples, in file order."""
    q_paths, a_paths = _paths(questions), _paths(annotations)
    if a_paths and len(a_paths) != len(q_paths):
        raise ValueError(f"{len(q_paths)} question file(s) but {len(a_paths)} annotation file(s)")
    anns: dict[int, tuple[str, str, tuple[str, ...], Any]] = {}
    for path in a_paths:
        for ann in _read_json(path, "annotations"):
            _check_annotation(ann, path)
            anns[int(ann["question_id"])] = _kept(ann)
    out: list[VQAExample] = []
    for path in q_paths:
        for q in _read_json(path, "questions"):
            qid = int(q["question_id"])
            ann = anns.get(qid)
            if a_paths and ann is None:
                raise ValueError(f"{path}: question_id {qid} has no annotation")
            question_type, answer_type, answers, mc = ann or ("", "", (), None)
            out.append(VQAExample(question_id=qid, image_id=int(q["image_id"]), question=str(q["question"]),
                                  question_type=question_type, answer_type=answer_type, answers=answers,
                                  mc_answer=mc))
    return out


def tokenize_question(text: str) -> list[str]:
    """Lower-case word tokens; "'s" is split off, other punctuation dropped."""
    text = text.lower().replace("'s", " 's")
    return re.findall(r"'s|[a-z0-9]+", text)


def build_question_vocab(examples: Sequence[VQAExample], min_count: int = 1) -> Vocab:
    """The question vocabulary (``<pad> <unk>`` first) of the training questions."""
    return Vocab.build((tokenize_question(ex.question) for ex in examples), min_count, kind="question")


def encode_question(vocab: Vocab, text: str, max_len: int) -> np.ndarray:
    """int64 [max_len]: ids of the first ``max_len`` question tokens, right-padded with 0."""
    return vocab.encode_padded(tokenize_question(text), max_len)


def build_answer_set(examples: Sequence[VQAExample], min_count: int = 9) -> list[str]:
    """Normalised consensus answers that occur in >= ``min_count`` questions, most frequent first.

    The consensus answer is ``multiple_choice_answer`` (else the most common human answer), normalised
    like a prediction.
    """
    counts: Counter[str] = Counter()
    for ex in examples:
        if not ex.answers:
            continue
        mc = ex.mc_answer if ex.mc_answer is not None else Counter(ex.answers).most_common(1)[0][0]
        ans = normalize_answer(mc)
        if ans:
            counts[ans] += 1
    answers = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    if not answers:
        top = counts.most_common(1)[0][1] if counts else 0
        raise ValueError(
            f"no candidate answers: min_answer_count={min_count} is too high "
            f"(the most frequent answer occurs {top} times in {len(examples)} questions)"
        )
    return answers


def candidate_examples(
    train: Sequence[VQAExample], val: Sequence[VQAExample], answers_from: str = "train"
) -> list[VQAExample]:
    """The annotated examples whose answers choose the candidates (see ``VQADataConfig.answers_from``)."""
    if answers_from not in ANSWER_SOURCES:
        raise UserError(f"unknown answers_from {answers_from!r}", "data.answers_from",
                        f"use one of {', '.join(ANSWER_SOURCES)}", usage=True)
    return [*train, *(ex for ex in val if ex.answers)] if answers_from == "train+val" else list(train)


def compared_forms(answers: Sequence[str]) -> dict[str, list[int]]:
    """Map each candidate's normalised (compared) form to its ids: what ``soft_target`` matches against."""
    out: dict[str, list[int]] = {}
    for i, a in enumerate(answers):
        out.setdefault(normalize_answer(a), []).append(i)
    return out


def soft_target(ex: VQAExample, compared: dict[str, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Candidate ids and the official accuracy each would score vs the 10 human answers (non-zero only).

    ``compared`` comes from :func:`compared_forms`.
    """
    idx, val = [], []
    for ref, score in soft_scores(ex.answers).items():
        for j in compared.get(ref, ()):
            if score > 0:
                idx.append(j)
                val.append(score)
    return np.asarray(idx, dtype=np.int64), np.asarray(val, dtype=np.float32)


def join_store(
    examples: Sequence[VQAExample], store: FeatureStore, skip_missing: bool = False
) -> tuple[list[VQAExample], dict[str, Any]]:
    """Keep examples whose image is in ``store``; report what was dropped (error unless ``skip_missing``)."""
    present = {i: (str(i) in store) for i in {ex.image_id for ex in examples}}  # no sort: linear in the questions
    missing_images = sorted(i for i, ok in present.items() if not ok)
    kept = [ex for ex in examples if present[ex.image_id]]
    report = {
        "questions": len(examples),
        "kept": len(kept),
        "missing_questions": len(examples) - len(kept),
        "missing_images": len(missing_images),
        "missing_image_examples": missing_images[:5],
    }
    if missing_images and not skip_missing:
        raise MissingImagesError(
            f"{report['missing_questions']} question(s) refer to {len(missing_images)} image(s) missing from "
            f"{store.path} (e.g. image_id {missing_images[:5]}); pass skip_missing to drop them"
        )
    return kept, report


def _store_rows(store: FeatureStore, examples: Sequence[VQAExample]) -> int:
    """Rows to pad to: a region store's largest box count, or a grid's H*W (read from one record)."""
    if store.kind == "region":
        return int(store.dims["max_boxes"])
    first = str(examples[0].image_id) if examples else store.image_ids()[0]
    return int(store[first]["features"].shape[0])


def featurize(rec: dict[str, Any], kind: str, max_boxes: int, image_id: Any = "") -> tuple[np.ndarray, ...]:
    """features float32 [K, D], boxes float32 [K, 4] (zeros for grids), mask bool [K], K = max_boxes.

    The one featurize step of VQA, shared by the Dataset and ``butd answer``.
    """
    src = rec["features"]
    feature_dim = int(src.shape[1])
    if kind == "grid" and src.shape[0] > max_boxes:
        raise ValueError(
            f"image {image_id}: grid has {src.shape[0]} cells, more than max_boxes={max_boxes}"
        )
    k = min(src.shape[0], max_boxes)
    out = np.zeros((max_boxes, feature_dim), dtype=np.float32)
    out[:k] = src[:k]  # one copy, casting float16 -> float32 on the way
    boxes = np.zeros((max_boxes, 4), dtype=np.float32)
    if "boxes" in rec:
        boxes[:k] = rec["boxes"][:k]
    mask = np.zeros(max_boxes, dtype=bool)
    mask[:k] = True
    return out, boxes, mask


class VQADataset(Dataset):
    """Examples joined to a FeatureStore; items are dicts of tensors (see ``__getitem__``)."""

    def __init__(
        self,
        examples: Sequence[VQAExample],
        store: FeatureStore,
        vocab: Vocab,
        answers: Sequence[str],
        config: VQADataConfig = VQADataConfig(),
    ) -> None:
        self.examples = list(examples)
        self.store, self.vocab, self.config = store, vocab, config
        self.answers = list(answers)
        compared = compared_forms(self.answers)
        self.max_boxes = int(config.max_boxes or _store_rows(store, self.examples))
        self.feature_dim = store.feature_dim
        self.targets = [soft_target(ex, compared) if ex.answers else None for ex in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def answer_prior(self) -> torch.Tensor:
        """Mean soft score of each candidate over the annotated examples, float32 [A]."""
        total = np.zeros(len(self.answers), dtype=np.float64)
        n = 0
        for t in self.targets:
            if t is not None:
                np.add.at(total, t[0], t[1])
                n += 1
        return torch.from_numpy(total / max(n, 1)).float()

    def regions(self, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """features float32 [K, D], boxes float32 [K, 4] (zeros for grids), mask bool [K], K = max_boxes."""
        return featurize(self.store[str(image_id)], self.store.kind, self.max_boxes, image_id)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """question_id [], tokens int64 [L], features [K, D], boxes [K, 4], mask bool [K], target [A]."""
        ex = self.examples[i]
        feats, boxes, mask = self.regions(ex.image_id)
        target = torch.zeros(len(self.answers), dtype=torch.float32)
        if self.targets[i] is not None:
            idx, val = self.targets[i]
            target[torch.from_numpy(idx)] = torch.from_numpy(val)
        return {
            "question_id": torch.tensor(ex.question_id, dtype=torch.int64),
            "tokens": torch.from_numpy(encode_question(self.vocab, ex.question, self.config.max_question_len)),
            "features": torch.from_numpy(feats),
            "boxes": torch.from_numpy(boxes),
            "mask": torch.from_numpy(mask),
            "target": target,
        }


def synthetic_record(k: int, dim: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random region record (for benchmarks and tests)."""
    boxes = np.sort(rng.uniform(0, 100, (k, 4)).astype(np.float32), axis=1)
    return {
        "boxes": boxes,
        "features": rng.standard_normal((k, dim)).astype(np.float32),
        "num_boxes": scalar(k),
        "image_w": scalar(100),
        "image_h": scalar(100),
    }
