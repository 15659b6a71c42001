"""The captioning task: train, load a run, evaluate, caption new images, report items, featurize."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from butd.datasets.captions import DataConfig
from butd.datasets.captions import featurize as _featurize
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

__all__ = ["EVAL_OPTIONS", "TRAIN_OPTIONS", "build_model", "check_config", "evaluate", "featurize", "load_run",
           "predict", "report_items", "train", "train_config"]

SPLIT = "test"  # the split `butd eval` / `butd report` use by default
# options of `butd train` / `butd eval` that belong to captioning (True: required); the other task's are refused
TRAIN_OPTIONS = {"captions": True, "scst_epochs": False}
EVAL_OPTIONS = {"captions": False, "beam": False, "decode": False, "scorers": False, "instances": False,
                "chair_words": False, "boxes": False, "attention": False}


def featurize(record: dict[str, Any], kind: str, config: DataConfig) -> dict[str, torch.Tensor]:
    """One store record -> the model input of a batch of one: features [1, K, D], mask [1, K].

    Uses the same function as :class:`~butd.datasets.captions.CaptionDataset`, so new photos see the
    rows the model was trained on (all cells of a grid; the first ``max_boxes`` regions).
    """
    feats = torch.from_numpy(_featurize(record, kind, config))[None]
    return {"features": feats, "mask": torch.ones(feats.shape[:2], dtype=torch.bool)}


def train_config(model: str, options: dict[str, Any], config: str | Path | None = None,
                 overrides: dict[str, Any] | None = None) -> Any:
    """The merged caption train config of ``model``: defaults, the YAML ``config``, ``overrides``, then the
    command-line ``options`` (``epochs``: the XE phase, ``scst_epochs``, ``device``)."""
    from butd.train.caption import load_caption_config

    overrides = {**(overrides or {}), "model_name": model}
    if options.get("epochs") is not None:
        overrides["xe"] = {**overrides.get("xe", {}), "epochs": options["epochs"]}
    if options.get("scst_epochs") is not None:
        overrides["scst"] = {**overrides.get("scst", {}), "epochs": options["scst_epochs"]}
    if options.get("device"):
        overrides["device"] = options["device"]
    return load_caption_config(config, overrides)


def check_config(cfg: Any, world_size: int = 1) -> None:
    """Every setting of every phase (XE, SCST, decoding), before any work starts."""
    from butd.train.caption import check_caption_config

    check_caption_config(cfg, world_size)


def train(model: str, options: dict[str, Any], out: str | Path, *, config: str | Path | None = None,
          overrides: dict[str, Any] | None = None, resume: bool = False,
          echo: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train caption model ``model`` on ``options["features"]`` + ``options["captions"]`` into ``out``.

    ``options`` may also set ``epochs`` (XE), ``scst_epochs``, ``device`` and ``skip_missing``.
    """
    from butd.train.caption import CaptionPaths, train_caption

    check_options("caption", "train", options, model)
    cfg = train_config(model, options, config, overrides)
    paths = CaptionPaths(str(options["features"]), str(options["captions"]))
    return train_caption(cfg, paths, out, skip_missing=bool(options.get("skip_missing")), resume=resume, echo=echo)


def build_model(cfg: Any, vocab: Any, answers: Any, feature_dim: int) -> torch.nn.Module:
    from butd.models.registry import build_caption_model

    return build_caption_model(cfg.model_name, len(vocab), feature_dim, cfg.model)


def load_run(run: str | Path, device: str = "cpu", which: str = "best") -> Run:
    """A finished caption run: model (eval mode, on ``device``), config, vocabulary, run.json."""
    from butd.train.caption import CaptionTrainConfig

    return load(run, device, task="caption", config_class=CaptionTrainConfig, vocab_kind="caption",
                build=build_model, which=which)


def _dataset(run: Run, split: str, features: str | None, captions: str | None, *, limit: int = 0,
             skip_missing: bool | None = None):
    """(per-image CaptionDataset of ``split``, store path, captions path), where the data is now."""
    from butd.datasets.captions import CaptionDataset, load_karpathy, split_images
    from butd.shards import FeatureStore

    store_path, captions_path = run.data("features", features), run.data("captions", captions)
    images = split_images(load_karpathy(captions_path), split)
    images = images[:limit] if limit else images
    skip = bool(run.info.get("skip_missing", False)) if skip_missing is None else skip_missing
    dataset = CaptionDataset(images, FeatureStore(store_path), run.vocab, run.config.data, per_caption=False,
                             skip_missing=skip)
    return dataset, store_path, captions_path


def _captions(run: Run, dataset: Any, dcfg: Any) -> dict[str, str]:
    """image id -> caption, decoded as ``dcfg`` says."""
    from torch.utils.data import DataLoader

    from butd.datasets.captions import collate_captions
    from butd.datasets.vocab import tokens_to_text
    from butd.models.inference import caption_tokens
    from butd.train.progress import terminal_bar

    loader = DataLoader(dataset, batch_size=run.config.eval_batch_size, collate_fn=collate_captions)
    out: dict[str, str] = {}
    for ids, tokens in caption_tokens(run.model, terminal_bar(loader, "captioning"), dcfg, run.vocab.words,
                                      run.device):
        out.update(zip(ids, tokens_to_text(tokens, run.vocab), strict=True))
    return out


def _attention(run: Run, dataset: Any, preds: dict[str, str]) -> dict[str, np.ndarray]:
    """image id -> the attention of each word of its caption [T, K] (teacher forcing the decoded words: the
    same states, so the same weights, as while decoding)."""
    from torch.utils.data import DataLoader

    from butd.datasets.captions import collate_captions

    out: dict[str, np.ndarray] = {}
    loader = DataLoader(dataset, batch_size=run.config.eval_batch_size, collate_fn=collate_captions)
    for batch in loader:
        words = [preds[i].split() for i in batch["image_ids"]]
        rows = [run.vocab.encode(w, len(w)) for w in words]
        caps = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for b, r in enumerate(rows):
            caps[b, :len(r)] = torch.tensor(r)
        with torch.no_grad():
            attn = run.model({"features": batch["features"].to(run.device), "mask": batch["mask"].to(run.device),
                              "captions": caps.to(run.device)})["attn"].cpu()
        for b, image_id in enumerate(batch["image_ids"]):
            out[image_id] = attn[b, :len(words[b]), :int(batch["mask"][b].sum())].numpy()
    return out


def _grounding(run: Run, dataset: Any, preds: dict[str, str], store_path: str, inputs: Any) -> tuple[dict, dict]:
    """(summary, per image words with their top regions) of ``--attention``."""
    from butd.evaluate.caption_checks import grounding_report
    from butd.evaluate.region_names import box_labels
    from butd.shards import FeatureStore

    store, names = FeatureStore(store_path), store_names(store_path)
    attention = _attention(run, dataset, preds)
    records = {k: store[k] for k in attention}
    labels = {k: box_labels(r, names, attention[k].shape[1]) if "boxes" in r else () for k, r in records.items()}
    return grounding_report({k: preds[k].split() for k in attention}, attention, records, inputs, labels=labels,
                            where=store_path)


def _result_id(image_id: str) -> int | str:
    """COCO results use integer image ids; Flickr ids (file stems) stay strings."""
    return int(image_id) if image_id.isdigit() else image_id


def evaluate(run: str | Path, split: str | None = None, *, device: str = "cpu",
             echo: Callable[[str], None] | None = None, **options: Any) -> dict[str, Any]:
    """Caption every image of ``split`` (default test) and score them against the references.

    ``options``: ``beam`` (replaces the run's decode width; 1 = greedy), ``decode`` (a whole DecodeConfig),
    ``scorers`` (pycocoevalcap scorers, for tests), ``features`` / ``captions`` (the data, if it moved),
    ``verbose`` (show what the metric libraries print).
    Writes ``RUN/captions_{split}.json`` (COCO results format ``[{"image_id", "caption"}]``) and
    ``RUN/eval_{split}.json`` (BLEU-1..4, METEOR, ROUGE-L, CIDEr and SPICE when available, with skipped
    metrics and why). Returns the latter.
    """
    from butd.datasets.captions import load_karpathy, split_images
    from butd.evaluate.caption_checks import caption_checks, checks_lines, hallucination_inputs
    from butd.evaluate.caption_metrics import caption_metrics, ptb_tokenize
    from butd.models.decoding import with_beam

    check_options("caption", "eval", options)
    split = split or SPLIT
    loaded = load_run(run, device)
    dataset, store_path, captions_path = _dataset(loaded, split, options.get("features"), options.get("captions"))
    inputs = hallucination_inputs(captions_path, options.get("instances") or (), options.get("chair_words"),
                                  options.get("boxes"))
    if options.get("attention") and dataset.images:  # a store without usable boxes stops before decoding
        from butd.evaluate.grounding import record_boxes
        from butd.shards import FeatureStore

        first = FeatureStore(store_path)[dataset.images[0].image_id]
        record_boxes(first, len(first["features"]), store_path)
    dcfg = with_beam(options.get("decode") or loaded.config.decode, options.get("beam"))
    beam = dcfg.beam if dcfg.method == "beam" else 1
    preds = _captions(loaded, dataset, dcfg)
    scorers, verbose = options.get("scorers"), bool(options.get("verbose"))
    if shutil.which("java") is not None:  # the COCO protocol: raw references, PTB-tokenised on both sides
        refs = {im.image_id: list(im.raw) for im in dataset.images}
        metrics = caption_metrics(preds, refs, scorers=scorers, tokenizer=ptb_tokenize, verbose=verbose)
    else:
        refs = {im.image_id: im.refs for im in dataset.images}
        metrics = caption_metrics(preds, refs, scorers=scorers, tokenizer=None, verbose=verbose)
        metrics["skipped"]["PTB tokenizer"] = "no `java` on PATH: Karpathy tokens used instead"
    training = [r for im in split_images(load_karpathy(captions_path), "train") for r in im.refs]
    checks, skipped_checks, hallucinated = caption_checks(preds, {im.image_id: list(im.raw) for im in dataset.images},
                                                          training, allowed_repeats=dcfg.allowed_repeats, inputs=inputs)
    files: dict[str, Any] = {}
    if options.get("attention"):
        checks["grounding"], files[f"attention_{split}.json"] = _grounding(loaded, dataset, preds, store_path, inputs)
    results = [{"image_id": _result_id(k), "caption": v, **({"hallucinated": hallucinated[k]} if k in hallucinated
                                                             else {})} for k, v in preds.items()]
    skipped = {**metrics.pop("skipped", {}), **skipped_checks}
    report = {"split": split, "beam": beam, "decode": asdict(dcfg), "n_images": len(preds),
              "model_name": loaded.config.model_name, "metrics": metrics, **checks, "skipped": skipped,
              "captions": f"captions_{split}.json"}
    write_outputs(loaded.path, {**files, f"captions_{split}.json": results, f"eval_{split}.json": report})
    if echo is not None:
        echo(f"{report['model_name']} on {split} ({report['n_images']} images, beam {beam})")
        for name, value in metrics.items():
            if isinstance(value, float):  # fractions, shown x100 as in the papers
                echo(f"  {name:10s} {100 * value:6.1f}")
        for line in checks_lines(report):
            echo(f"  {line}")
        for name, why in skipped.items():
            echo(f"  {why}" if str(why).startswith(name) else f"  {name} skipped: {why}")
        echo(f"wrote {', '.join(str(loaded.path / f) for f in [f'eval_{split}.json', report['captions'], *files])}")
    return report


def predict(run: str | Path, images: list[Path], *, beam: int | None = None, device: str = "cpu",
            warn: Callable[[str], None] | None = None) -> list[tuple[Path, str]]:
    """Caption new images end to end: the run's extractor, :func:`featurize`, then the model decoding as the
    run's ``decode:`` config says (``beam`` overrides its width)."""
    from butd.datasets.vocab import tokens_to_text
    from butd.models.decoding import with_beam
    from butd.models.inference import caption_tokens

    loaded = load_run(run, device)
    dcfg = with_beam(loaded.config.decode, beam)
    extractor = run_extractor(loaded.info)
    out = []
    for path, rec in extract_images(list(images), extractor, device, warn):
        x = featurize(rec, loaded.store_kind, loaded.config.data)
        batch = {**x, "image_ids": [str(path)]}
        for _, tokens in caption_tokens(loaded.model, [batch], dcfg, loaded.vocab.words, device):
            out.append((path, tokens_to_text(tokens, loaded.vocab)[0]))
    return out


def report_items(run: str | Path, split: str | None = None, n: int = 50, images_root: Path | None = None, *,
                 device: str = "cpu", **options: Any) -> list:
    """Greedy captions of the first `n` images of `split`, with each word's attention (model on ``device``)."""
    from butd.datasets.captions import collate_captions
    from butd.datasets.vocab import tokens_to_text
    from butd.evaluate.report import ReportItem
    from butd.models.decoding import greedy_decode
    from butd.shards import FeatureStore

    check_options("caption", "eval", options)
    split = split or SPLIT
    loaded = load_run(run, device)
    ds, store_path, captions_path = _dataset(loaded, split, options.get("features"), options.get("captions"),
                                             limit=n, skip_missing=True)
    store = FeatureStore(store_path)
    batch = collate_captions([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        out = greedy_decode(loaded.model, batch["features"].to(device), batch["mask"].to(device),
                            loaded.config.decode.max_len)
    out = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    texts = tokens_to_text(out["tokens"], loaded.vocab)
    index = image_index(image_roots(store_path, captions_path, images_root))
    names = store_names(store_path)
    items = []
    for b, im in enumerate(ds.images):
        path = index.get(im.image_id)
        if path is None:
            raise UserError(f"image {im.image_id} not found", images_root or store_path,
                            "pass --images-root DIR", usage=True)
        words = texts[b].split()
        k = int(batch["mask"][b].sum())
        frames = tuple((w, np.asarray(out["attn"][b, t, :k].numpy())) for t, w in enumerate(words))
        lines = (("caption", texts[b]), *(("reference", r) for r in im.raw[:3]))
        items.append(ReportItem(im.image_id, path, lines, frames, **geometry(store[im.image_id], k, names)))
    return items
