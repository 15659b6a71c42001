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
from butd.tasks.common import (
    check_options,
    extract_images,
    geometry,
    image_index,
    image_roots,
    run_extractor,
    store_names,
    write_outputs,
)
from butd.tasks.runs import Run, load

__all__ = ["EVAL_OPTIONS", "TRAIN_OPTIONS", "answer_picture", "build_model", "check_config", "check_question",
           "evaluate", "featurize", "load_run", "predict", "report_items", "split_files", "train", "train_config"]

SPLIT = "val"  # the split `butd eval` / `butd report` use by default
# options of `butd train` / `butd eval` that belong to VQA (True: required); the other task's are refused
TRAIN_OPTIONS = {"questions": True, "annotations": True, "val_questions": False, "val_annotations": False,
                 "glove": False, "min_answer_count": False}
EVAL_OPTIONS = {"questions": False, "annotations": False, "vqa_eval": False, "attention": False}


def featurize(record: dict[str, Any], kind: str, max_boxes: int) -> dict[str, torch.Tensor]:
    """One store record -> features [1, K, D], boxes [1, K, 4], mask [1, K] (the Dataset's own function)."""
    feats, boxes, mask = _featurize(record, kind, max_boxes)
    return {"features": torch.from_numpy(feats)[None], "boxes": torch.from_numpy(boxes)[None],
            "mask": torch.from_numpy(mask)[None]}


def train_config(model: str, options: dict[str, Any], config: str | Path | None = None,
                 overrides: dict[str, Any] | None = None) -> Any:
    """The merged VQA train config of ``model``: defaults, the YAML ``config``, ``overrides``, then ``options``."""
    from butd.train.vqa import load_config

    overrides = dict(overrides or {})
    if options.get("skip_missing"):
        overrides.setdefault("data", {})["skip_missing"] = True
    if options.get("min_answer_count") is not None:
        overrides.setdefault("data", {})["min_answer_count"] = options["min_answer_count"]
    if options.get("epochs") is not None:
        overrides.setdefault("loop", {})["epochs"] = options["epochs"]
    if options.get("device"):
        overrides["device"] = options["device"]
    return load_config(config, {**overrides, "model_name": model})


def check_config(cfg: Any, world_size: int = 1) -> None:
    """Every setting of the run, before any work starts."""
    from butd.train.vqa import check_vqa_config

    check_vqa_config(cfg, world_size)


def train(model: str, options: dict[str, Any], out: str | Path, *, config: str | Path | None = None,
          overrides: dict[str, Any] | None = None, resume: bool = False,
          echo: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train VQA model ``model`` on ``options`` (features, questions, annotations, val_*, glove) into ``out``.

    ``options`` may also set ``epochs``, ``min_answer_count``, ``device`` and ``skip_missing``.
    """
    from butd.train.vqa import VQAPaths, train_vqa

    check_options("vqa", "train", options, model)
    cfg = train_config(model, options, config, overrides)
    vq, va = tuple(options.get("val_questions") or ()), tuple(options.get("val_annotations") or ())
    if va and len(vq) != len(va):
        raise UserError("give one --val-annotations per --val-questions", f"{len(vq)} vs {len(va)}",
                        "pass them in pairs", usage=True)
    if len(options["questions"]) != len(options["annotations"]):
        raise UserError("give one --annotations per --questions", "", "pass them in pairs", usage=True)
    paths = VQAPaths(features=str(options["features"]), questions=tuple(options["questions"]),
                     annotations=tuple(options["annotations"]), val_questions=vq, val_annotations=va,
                     glove=options.get("glove"))
    return train_vqa(cfg, paths, out, resume=resume, echo=echo)


def build_model(cfg: Any, vocab: Any, answers: Any, feature_dim: int) -> torch.nn.Module:
    from butd.train.vqa import build_model as _build

    return _build(cfg, vocab, answers, feature_dim)


def load_run(run: str | Path, device: str = "cpu", which: str = "best") -> Run:
    """A finished VQA run: model (eval mode, on ``device``), config, vocabulary, answers, run.json."""
    from butd.train.vqa import VQATrainConfig, with_layer_forms

    return load(run, device, task="vqa", config_class=VQATrainConfig, vocab_kind="question", build=build_model,
                which=which, migrate=with_layer_forms)


def split_files(run: Run, split: str, questions: Sequence[str] | None = None,
                annotations: Sequence[str] | None = None) -> tuple[Any, Any]:
    """(questions, annotations or None) files of ``split`` ("val" or "train"), where they are now.

    ``questions`` / ``annotations`` (the ``--questions`` / ``--annotations`` options) replace the recorded ones.
    """
    if split not in ("train", "val"):
        raise UserError("a VQA run has the splits train and val", f"--split {split}",
                        "pass --split val (or train), or --questions/--annotations of another split with "
                        "--split val", usage=True)
    q_key, a_key = ("val_questions", "val_annotations") if split == "val" else ("questions", "annotations")
    if not questions and not run.info["data"].get(q_key):
        raise UserError(f"the run has no {split} questions", run.path,
                        "train it with --val-questions, or pass --questions", usage=True)
    qs = run.data(q_key, questions)
    ans = run.data(a_key, annotations) if annotations or not questions else None
    return qs, ans or None


def _examples(run: Run, split: str, options: dict[str, Any], skip_missing: bool | None = None):
    """(examples of ``split`` joined to the store, the join report, store path, question files)."""
    from butd.datasets.vqa import join_store, load_vqa
    from butd.shards import FeatureStore

    questions, annotations = split_files(run, split, options.get("questions"), options.get("annotations"))
    store_path = run.data("features", options.get("features"))
    skip = run.config.data.skip_missing if skip_missing is None else skip_missing
    examples, report = join_store(load_vqa(questions, annotations), FeatureStore(store_path), skip)
    return examples, report, store_path, questions


def _question_regions(run: Run, dataset: Any, store_path: str, k: int = 3) -> dict[str, Any]:
    """question id -> {"image_id", "question", "top": its k most attended regions} (``--attention``)."""
    from torch.utils.data import DataLoader

    from butd.evaluate.grounding import record_boxes, top_regions
    from butd.evaluate.region_names import box_labels
    from butd.models.inference import evaluation_mode
    from butd.shards import FeatureStore

    store, names = FeatureStore(store_path), store_names(store_path)
    by_qid = {ex.question_id: ex for ex in dataset.examples}
    out: dict[str, Any] = {}
    with evaluation_mode(run.model):
        for batch in DataLoader(dataset, batch_size=run.config.eval_batch_size):
            att = run.model({key: v.to(run.device) for key, v in batch.items()})["attention"].cpu().numpy()
            for b, qid in enumerate(batch["question_id"].tolist()):
                ex, n = by_qid[qid], int(batch["mask"][b].sum())
                rec = store[str(ex.image_id)]
                labels = box_labels(rec, names, n) if "boxes" in rec else ()
                out[str(qid)] = {"image_id": ex.image_id, "question": ex.question,
                                 "top": top_regions(att[b, :n], record_boxes(rec, n, store_path), labels, k)}
    return out


def evaluate(run: str | Path, split: str | None = None, *, device: str = "cpu",
             echo: Callable[[str], None] | None = None, **options: Any) -> dict[str, Any]:
    """Official VQA accuracy on ``split`` (default val); writes RUN/eval_SPLIT.json and RUN/results_SPLIT.json.

    ``options``: ``vqa_eval`` ("2017" or "master": the official evaluator's rules, see
    butd.evaluate.vqa_accuracy), ``features`` / ``questions`` / ``annotations`` (the data, if it moved).
    """
    from butd.datasets.vqa import VQADataset
    from butd.evaluate.vqa_accuracy import question_type_rows, vqa_accuracy
    from butd.shards import FeatureStore
    from butd.train.vqa import annotations_of, predict

    check_options("vqa", "eval", options)
    split, version = split or SPLIT, str(options.get("vqa_eval") or "2017")
    loaded = load_run(run, device)
    examples, report, store_path, _ = _examples(loaded, split, options)
    dataset = VQADataset(examples, FeatureStore(store_path), loaded.vocab, loaded.answers, loaded.config.data)
    preds = predict(loaded.model, dataset, loaded.config.eval_batch_size, device)
    anns = annotations_of(examples)
    result: dict[str, Any] = {"split": split, "data": report}
    if anns:
        result.update(vqa_accuracy(preds, anns, question_ids=[a["question_id"] for a in anns], version=version))
    files = {f"attention_{split}.json": _question_regions(loaded, dataset, store_path)} if options.get("attention") \
        else {}
    write_outputs(loaded.path, {**files, f"eval_{split}.json": result,
                                f"results_{split}.json": [{"question_id": q, "answer": a} for q, a in preds.items()]})
    if echo is not None and anns:
        echo(f"{split}: overall {result['overall']:.2f} on {result['num_questions']} questions "
             f"(official evaluator, {version} rules)")
        for k, v in sorted(result["per_answer_type"].items()):
            echo(f"  {k:8s} {v:.2f}")
        echo("  per question type (official types, in the evaluator's order):")
        for qtype, acc, n in question_type_rows(result):
            echo(f"    {qtype:24s} {acc:6.2f}  ({n} questions)")
    if echo is not None and files:
        echo(f"wrote {loaded.path / f'attention_{split}.json'}")
    return result


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
    loaded = load_run(run, device)
    cfg = loaded.config
    check_question(question, loaded.vocab, cfg.data.max_question_len, warn)
    found = extract_images([Path(image)], run_extractor(loaded.info), device)
    if not found:
        raise UserError("the image could not be read", image, "pass a JPEG or PNG file")
    rec = found[0][1]
    max_boxes = int(cfg.data.max_boxes or rec["features"].shape[0])
    batch = featurize(rec, loaded.store_kind, max_boxes)
    batch["tokens"] = torch.from_numpy(encode_question(loaded.vocab, question, cfg.data.max_question_len))[None]
    with torch.no_grad():
        res = loaded.model.answer({k: v.to(device) for k, v in batch.items()}, loaded.answers, k=top)[0]
    k = int(batch["mask"].sum())
    return {"answers": res["answers"], "scores": res["scores"], "attention": np.asarray(res["attention"])[:k],
            "record": rec, **geometry(rec, k, store_names(_store_if_present(loaded)))}


def _store_if_present(run: Run) -> str | None:
    """The run's store, if it is still where run.json says (only for box names; `answer` needs no data)."""
    try:
        return run.data("features")
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


def report_items(run: str | Path, split: str | None = None, n: int = 50, images_root: Path | None = None, *,
                 device: str = "cpu", **options: Any) -> list:
    """The first `n` questions of `split`: question, top-5 answers with scores, the human answers, the
    answer type and the attended regions (named by the detector's classes when the store has names)."""
    from butd.datasets.vqa import VQADataset
    from butd.evaluate.report import ReportItem
    from butd.shards import FeatureStore

    check_options("vqa", "eval", options)
    split = split or SPLIT
    loaded = load_run(run, device)
    examples, _, store_path, qs = _examples(loaded, split, options, skip_missing=True)
    examples = examples[:n]
    store = FeatureStore(store_path)
    ds = VQADataset(examples, store, loaded.vocab, loaded.answers, loaded.config.data)
    batch = {k: torch.stack([ds[i][k] for i in range(len(ds))]).to(device) for k in ("tokens", "features", "mask")}
    with torch.no_grad():
        results = loaded.model.answer(batch, loaded.answers, k=5)
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
                                question_type=ex.question_type,
                                **geometry(rec, len(weights), names)))
    return items
