"""The VQA task: train, load a run, evaluate, answer about a new image, report items, featurize."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from butd.datasets.vqa import encode_question
from butd.datasets.vqa import featurize as _featurize
from butd.errors import UserError
from butd.tasks.common import extract_images, geometry, image_index, image_roots, run_extractor, store_names

__all__ = ["answer_picture", "check_question", "evaluate", "featurize", "load_run", "predict", "report_items", "train"]

SPLIT = "val"  # the split `butd eval` / `butd report` use by default


def featurize(record: dict[str, Any], kind: str, max_boxes: int) -> dict[str, torch.Tensor]:
    """One store record -> features [1, K, D], boxes [1, K, 4], mask [1, K] (the Dataset's own function)."""
    feats, boxes, mask = _featurize(record, kind, max_boxes)
    return {"features": torch.from_numpy(feats)[None], "boxes": torch.from_numpy(boxes)[None],
            "mask": torch.from_numpy(mask)[None]}


def train(model: str, options: dict[str, Any], out: str | Path, *, config: str | Path | None = None,
          overrides: dict[str, Any] | None = None, resume: bool = False,
          echo: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train VQA model ``model`` on ``options`` (features, questions, annotations, val_*, glove) into ``out``.

    ``options`` may also set ``epochs``, ``min_answer_count``, ``device`` and ``skip_missing``.
    """
    from butd.train.vqa import VQAPaths, load_config, train_vqa

    overrides = dict(overrides or {})
    if options.get("skip_missing"):
        overrides.setdefault("data", {})["skip_missing"] = True
    if options.get("min_answer_count") is not None:
        overrides.setdefault("data", {})["min_answer_count"] = options["min_answer_count"]
    if options.get("epochs") is not None:
        overrides.setdefault("loop", {})["epochs"] = options["epochs"]
    if options.get("device"):
        overrides["device"] = options["device"]
    cfg = load_config(config, {**overrides, "model_name": model})
    vq, va = tuple(options.get("val_questions") or ()), tuple(options.get("val_annotations") or ())
    if va and len(vq) != len(va):
        raise UserError("give one --val-annotations per --val-questions", f"{len(vq)} vs {len(va)}",
                        "pass them in pairs", usage=True)
    if len(options["questions"]) != len(options["annotations"]):
        raise UserError("give one --annotations per --questions", "", "pass them in pairs", usage=True)
    paths = VQAPaths(features=str(options["features"]), questions=tuple(options["questions"]),
                     annotations=tuple(options["annotations"]), val_questions=vq, val_annotations=va,
                     glove=options.get("glove"))
    state = train_vqa(cfg, paths, out, resume=resume, echo=echo)
    return {"steps": state.step, "epochs": state.epoch, "best": state.best, "best_epoch": state.best_epoch}


def load_run(run: str | Path, device: str = "cpu"):
    """(model in eval mode on ``device``, config, vocab, answers, run.json) of a VQA run."""
    from butd.train.vqa import load_run as _load

    model, cfg, vocab, answers, info = _load(run)
    return model.to(device), cfg, vocab, answers, info


def evaluate(run: str | Path, split: str = SPLIT, *, device: str = "cpu", features: str | None = None,
             questions: Sequence[str] | None = None, annotations: Sequence[str] | None = None,
             echo: Callable[[str], None] | None = None, vqa_eval: str = "2017", **_: Any) -> dict[str, Any]:
    """Official VQA accuracy on ``split`` (``vqa_eval``: the 2017 or master rules of the official evaluator);
    writes RUN/eval_SPLIT.json and RUN/results_SPLIT.json."""
    from butd.train.vqa import eval_run

    return eval_run(run, split, echo=echo, features=features, questions=questions, annotations=annotations,
                    device=device, version=vqa_eval)


def check_question(question: str, vocab: Any, max_len: int, warn: Callable[[str], None] | None = None) -> None:
    """An empty question, or one with no word the model knows, is refused; unknown words are warned about
    (the model reads each as the unknown word), and so are words past the model's question length."""
    from butd.datasets.vqa import tokenize_question

    tokens = tokenize_question(question)
    if not tokens:
        raise UserError("the question has no words", repr(question), "ask a question, e.g. \"what color is the bus?\"",
                        usage=True)
    unknown = sorted({t for t in tokens[:max_len] if t not in vocab.index})
    if len(unknown) == len(set(tokens[:max_len])):
        raise UserError("none of the question's words is in the run's vocabulary", repr(question),
                        "ask with words from the training questions (RUN/vocab.json)", usage=True)
    if warn is not None and unknown:
        warn(f"warning: the model never saw {', '.join(repr(w) for w in unknown)}: read as unknown words")
    if warn is not None and len(tokens) > max_len:
        warn(f"warning: only the first {max_len} words are read: {' '.join(tokens[max_len:])!r} is ignored")


def predict(run: str | Path, image: Path, question: str, *, top: int = 5, device: str = "cpu",
            warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Answer ``question`` about a new ``image``: top answers, scores, attention and the record's geometry."""
    model, cfg, vocab, answers, info = load_run(run, device)
    check_question(question, vocab, cfg.data.max_question_len, warn)
    found = extract_images([Path(image)], run_extractor(info), device)
    if not found:
        raise UserError("the image could not be read", image, "pass a JPEG or PNG file")
    rec = found[0][1]
    kind = info["store"]["kind"]
    max_boxes = int(cfg.data.max_boxes or rec["features"].shape[0])
    batch = featurize(rec, kind, max_boxes)
    batch["tokens"] = torch.from_numpy(encode_question(vocab, question, cfg.data.max_question_len))[None]
    with torch.no_grad():
        res = model.answer({k: v.to(device) for k, v in batch.items()}, answers, k=top)[0]
    k = int(batch["mask"].sum())
    return {"answers": res["answers"], "scores": res["scores"], "attention": np.asarray(res["attention"])[:k],
            "record": rec, **geometry(rec, k, store_names(_store_if_present(run, info)))}


def _store_if_present(run: str | Path, info: dict[str, Any]) -> str | None:
    """The run's store, if it is still where run.json says (only for box names; `answer` needs no data)."""
    from butd.train.run_format import resolve_data

    try:
        return resolve_data(run, info, "features")
    except UserError:
        return None


def answer_picture(image: Path, question: str, result: dict[str, Any]):
    """The picture `butd answer` writes: question, answers, heat map, labelled top boxes, colour bar."""
    from PIL import Image

    from butd.evaluate.attention_viz import answer_figure

    with Image.open(image) as im:  # answer_figure applies the EXIF orientation, as the extractor did
        return answer_figure(im, question, result["answers"], result["scores"], result["attention"],
                             boxes=result.get("boxes"), grid=result.get("grid"),
                             box_labels=result.get("box_labels", ()))


def report_items(run: str | Path, split: str = SPLIT, n: int = 50, images_root: Path | None = None, *,
                 features: str | None = None, questions: Sequence[str] | None = None,
                 annotations: Sequence[str] | None = None, device: str = "cpu", **_: Any) -> list:
    """The first `n` questions of `split`: question, top-5 answers with scores, the human answers, the
    answer type and the attended regions (named by the detector's classes when the store has names)."""
    from butd.datasets.vqa import VQADataset, join_store, load_vqa
    from butd.evaluate.report import ReportItem
    from butd.shards import FeatureStore
    from butd.train.run_format import resolve_data
    from butd.train.vqa import split_files

    model, cfg, vocab, answers, info = load_run(run, device)
    qs, anns = split_files(run, info, split, questions, annotations)
    store_path = resolve_data(run, info, "features", features)
    store = FeatureStore(store_path)
    examples, _ = join_store(load_vqa(qs, anns), store, True)
    examples = examples[:n]
    ds = VQADataset(examples, store, vocab, answers, cfg.data)
    batch = {k: torch.stack([ds[i][k] for i in range(len(ds))]).to(device) for k in ("tokens", "features", "mask")}
    results = model.answer(batch, answers, k=5)
    first = qs[0] if isinstance(qs, list) else qs
    index = image_index(image_roots(store_path, first, images_root))
    names = store_names(store_path)
    items = []
    for ex, res in zip(examples, results):
        path = index.get(str(ex.image_id))
        if path is None:
            raise UserError(f"image {ex.image_id} not found", images_root or store_path,
                            "pass --images-root DIR", usage=True)
        rec = store[str(ex.image_id)]
        weights = np.asarray(res["attention"])
        title = f"Q: {ex.question}\nA: {res['answers'][0]} ({res['scores'][0]:.2f})"
        items.append(ReportItem(f"q{ex.question_id}", path, (("question", ex.question), ("image", str(ex.image_id))),
                                ((title, weights),), answers=tuple(zip(res["answers"], res["scores"])),
                                truth=tuple(ex.answers), answer_type=ex.answer_type,
                                **geometry(rec, len(weights), names)))
    return items
