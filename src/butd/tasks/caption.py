"""The captioning task: train, load a run, evaluate, caption new images, report items, featurize."""

from __future__ import annotations

import json
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
from butd.tasks.common import extract_images, geometry, image_index, image_roots, run_extractor, store_names

__all__ = ["evaluate", "featurize", "load_run", "predict", "report_items", "train"]

SPLIT = "test"  # the split `butd eval` / `butd report` use by default


def featurize(record: dict[str, Any], kind: str, config: DataConfig) -> dict[str, torch.Tensor]:
    """One store record -> the model input of a batch of one: features [1, K, D], mask [1, K].

    Uses the same function as :class:`~butd.datasets.captions.CaptionDataset`, so new photos see the
    rows the model was trained on (all cells of a grid; the first ``max_boxes`` regions).
    """
    feats = torch.from_numpy(_featurize(record, kind, config))[None]
    return {"features": feats, "mask": torch.ones(feats.shape[:2], dtype=torch.bool)}


def train(model: str, options: dict[str, Any], out: str | Path, *, config: str | Path | None = None,
          overrides: dict[str, Any] | None = None, resume: bool = False,
          echo: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train caption model ``model`` on ``options["features"]`` + ``options["captions"]`` into ``out``.

    ``options`` may also set ``epochs`` (XE), ``scst_epochs``, ``device`` and ``skip_missing``.
    """
    from butd.train.caption import CaptionPaths, load_caption_config, train_caption

    overrides = {**(overrides or {}), "model_name": model}
    if options.get("epochs") is not None:
        overrides["xe"] = {**overrides.get("xe", {}), "epochs": options["epochs"]}
    if options.get("scst_epochs") is not None:
        overrides["scst"] = {**overrides.get("scst", {}), "epochs": options["scst_epochs"]}
    if options.get("device"):
        overrides["device"] = options["device"]
    cfg = load_caption_config(config, overrides)
    paths = CaptionPaths(str(options["features"]), str(options["captions"]))
    return train_caption(cfg, paths, out, skip_missing=bool(options.get("skip_missing")), resume=resume, echo=echo)


def load_run(run: str | Path, device: str = "cpu"):
    """(config, model in eval mode, vocabulary, run.json) of a finished caption run."""
    from butd.train.caption import load_caption_run

    return load_caption_run(run, device)


def _result_id(image_id: str) -> int | str:
    """COCO results use integer image ids; Flickr ids (file stems) stay strings."""
    return int(image_id) if image_id.isdigit() else image_id


def evaluate(run: str | Path, split: str = SPLIT, *, beam: int | None = None, scorers: Any = None,
             device: str = "cpu", features: str | None = None, captions: str | None = None,
             echo: Callable[[str], None] | None = None, decode: Any = None, verbose: bool = False,
             **_: Any) -> dict[str, Any]:
    """Caption every image of ``split`` with the run's model and score against the references (``verbose``:
    show what the metric libraries print).

    Decodes as the run's ``decode:`` config says (or ``decode``, a DecodeConfig), its beam width replaced by
    ``beam`` when given (greedy when 1), writes ``RUN/captions_{split}.json``
    (COCO results format ``[{"image_id", "caption"}]``) and ``RUN/eval_{split}.json`` (metrics: BLEU-1..4,
    METEOR, ROUGE-L, CIDEr and SPICE when available, with skipped metrics and why). Returns the latter.
    """
    from butd.datasets.captions import CaptionDataset, load_karpathy, split_images
    from butd.evaluate.caption_metrics import caption_metrics, ptb_tokenize
    from butd.models.decoding import with_beam
    from butd.shards import FeatureStore
    from butd.train.caption import caption_data, generate_captions, load_caption_run

    if beam is not None and beam < 1:
        raise UserError("the beam width must be at least 1", beam, "pass --beam 1 (greedy) or more", usage=True)
    run = Path(run)
    cfg, model, vocab, info = load_caption_run(run, device)
    store_path, captions_path = caption_data(run, info, features, captions)
    images = split_images(load_karpathy(captions_path), split)
    dataset = CaptionDataset(images, FeatureStore(store_path), vocab, cfg.data, per_caption=False,
                             skip_missing=bool(info["summary"].get("skip_missing", False)))
    dcfg = with_beam(decode if decode is not None else cfg.decode, beam)
    beam = dcfg.beam if dcfg.method == "beam" else 1
    preds = generate_captions(model, dataset, vocab, dcfg, cfg.eval_batch_size, device)
    if shutil.which("java") is not None:  # the COCO protocol: raw references, PTB-tokenised on both sides
        refs = {im.image_id: list(im.raw) for im in dataset.images}
        metrics = caption_metrics(preds, refs, scorers=scorers, tokenizer=ptb_tokenize, verbose=verbose)
    else:
        refs = {im.image_id: im.refs for im in dataset.images}
        metrics = caption_metrics(preds, refs, scorers=scorers, tokenizer=None, verbose=verbose)
        metrics["skipped"]["PTB tokenizer"] = "no `java` on PATH: Karpathy tokens used instead"
    results = [{"image_id": _result_id(k), "caption": v} for k, v in preds.items()]
    (run / f"captions_{split}.json").write_text(json.dumps(results), encoding="utf-8")
    skipped = metrics.pop("skipped", {})
    report = {"split": split, "beam": beam, "decode": asdict(dcfg), "n_images": len(preds),
              "model_name": cfg.model_name,
              "metrics": metrics, "skipped": skipped, "captions": f"captions_{split}.json"}
    (run / f"eval_{split}.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    if echo is not None:
        echo(f"{report['model_name']} on {split} ({report['n_images']} images, beam {beam})")
        for name, value in metrics.items():
            if isinstance(value, float):  # fractions, shown x100 as in the papers
                echo(f"  {name:10s} {100 * value:6.1f}")
        for name, why in skipped.items():
            echo(f"  {why}" if str(why).startswith(name) else f"  {name} skipped: {why}")
        echo(f"wrote {run / ('eval_' + split + '.json')} and {run / report['captions']}")
    return report


def predict(run: str | Path, images: list[Path], *, beam: int | None = None, device: str = "cpu",
            warn: Callable[[str], None] | None = None) -> list[tuple[Path, str]]:
    """Caption new images end to end: the run's extractor, :func:`featurize`, then the model decoding as the
    run's ``decode:`` config says (``beam`` overrides its width)."""
    from butd.models.decoding import decode, with_beam
    from butd.train.caption import load_caption_run
    from butd.train.scst import tokens_to_text

    cfg, model, vocab, info = load_caption_run(run, device)
    extractor = run_extractor(info)
    if beam is not None and beam < 1:
        raise UserError("the beam width must be at least 1", beam, "pass --beam 1 (greedy) or more", usage=True)
    dcfg = with_beam(cfg.decode, beam)
    out = []
    for path, rec in extract_images(list(images), extractor, device, warn):
        x = featurize(rec, info["store"]["kind"], cfg.data)
        with torch.no_grad():
            tokens = decode(model, x["features"].to(device), x["mask"].to(device), dcfg, vocab.words)
        out.append((path, tokens_to_text(tokens.cpu(), vocab)[0]))
    return out


def report_items(run: str | Path, split: str = SPLIT, n: int = 50, images_root: Path | None = None, *,
                 features: str | None = None, captions: str | None = None, device: str = "cpu") -> list:
    """Greedy captions of the first `n` images of `split`, with each word's attention (model on ``device``)."""
    from butd.datasets.captions import CaptionDataset, collate_captions, load_karpathy, split_images
    from butd.evaluate.report import ReportItem
    from butd.models.decoding import greedy_decode
    from butd.shards import FeatureStore
    from butd.train.caption import caption_data, load_caption_run
    from butd.train.scst import tokens_to_text

    cfg, model, vocab, info = load_caption_run(run, device)
    store_path, captions_path = caption_data(run, info, features, captions)
    store = FeatureStore(store_path)
    images = split_images(load_karpathy(captions_path), split)[:n]
    ds = CaptionDataset(images, store, vocab, cfg.data, per_caption=False, skip_missing=True)
    batch = collate_captions([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        out = greedy_decode(model, batch["features"].to(device), batch["mask"].to(device), cfg.decode.max_len)
    out = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    texts = tokens_to_text(out["tokens"], vocab)
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
