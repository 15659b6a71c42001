"""Command-line entry points of the caption trainer: ``butd train`` and ``butd eval-caption``.

``train_caption_cmd`` and ``eval_caption_cmd`` are click commands for ``butd.cli`` to register;
:func:`eval_caption` is the library function behind the second.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from butd.models.registry import CAPTION_MODELS

__all__ = ["eval_caption", "eval_caption_cmd", "train_caption_cmd"]


def _result_id(image_id: str) -> int | str:
    """COCO results use integer image ids; Flickr ids (file stems) stay strings."""
    return int(image_id) if image_id.isdigit() else image_id


def eval_caption(run: str | Path, split: str = "test", beam: int | None = None, *, scorers: Any = None,
                 device: str = "cpu", decode: Any = None) -> dict[str, Any]:
    """Caption every image of ``split`` with the run's final model and score against the references.

    Decodes as the run's ``decode:`` config says (or ``decode``, a DecodeConfig), with its beam width replaced
    by ``beam`` when given (greedy when 1), writes ``RUN/captions_{split}.json``
    (COCO results format ``[{"image_id", "caption"}]``) and ``RUN/eval_{split}.json`` (metrics: BLEU-1..4,
    METEOR, ROUGE-L, CIDEr and SPICE when available, with skipped metrics and why). Returns the latter.
    """
    from butd.datasets.captions import CaptionDataset, load_karpathy, split_images
    from butd.evaluate.caption_metrics import caption_metrics, ptb_tokenize
    from butd.models.decoding import with_beam
    from butd.shards import FeatureStore
    from butd.train.caption import generate_captions, load_caption_run

    if beam is not None and beam < 1:
        raise ValueError("beam must be >= 1")
    run = Path(run)
    cfg, model, vocab, info = load_caption_run(run, device)
    images = split_images(load_karpathy(info["captions"]), split)
    dataset = CaptionDataset(images, FeatureStore(info["features"]), vocab, cfg.data, per_caption=False,
                             skip_missing=bool(info.get("skip_missing", False)))
    dcfg = with_beam(decode if decode is not None else cfg.decode, beam)
    preds = generate_captions(model, dataset, vocab, dcfg, cfg.eval_batch_size, device)
    java = shutil.which("java") is not None
    if java:  # the COCO protocol: raw references, PTB-tokenised on both sides
        refs = {im.image_id: list(im.raw) for im in dataset.images}
        metrics = caption_metrics(preds, refs, scorers=scorers, tokenizer=ptb_tokenize)
    else:
        refs = {im.image_id: im.refs for im in dataset.images}
        metrics = caption_metrics(preds, refs, scorers=scorers, tokenizer=None)
        metrics["skipped"]["PTB tokenizer"] = "no `java` on PATH: Karpathy tokens used instead"
    results = [{"image_id": _result_id(k), "caption": v} for k, v in preds.items()]
    (run / f"captions_{split}.json").write_text(json.dumps(results), encoding="utf-8")
    skipped = metrics.pop("skipped", {})
    report = {"split": split, "beam": dcfg.beam if dcfg.method == "beam" else 1, "decode": asdict(dcfg),
              "n_images": len(preds), "model_name": cfg.model_name,
              "metrics": metrics, "skipped": skipped, "captions": f"captions_{split}.json"}
    (run / f"eval_{split}.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


@click.command("train")
@click.option("--model", "model_name", type=click.Choice(sorted(CAPTION_MODELS)), default=None,
              help="Caption model (default: the config's model_name, updown).")
@click.option("--features", required=True, type=click.Path(path_type=Path), help="Feature store directory.")
@click.option("--captions", required=True, type=click.Path(path_type=Path), help="Karpathy split JSON.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to write.")
@click.option("--config", "config_file", type=click.Path(exists=True, path_type=Path), default=None,
              help="YAML overrides of CaptionTrainConfig.")
@click.option("--epochs", type=int, default=None, help="Cross-entropy epochs (xe.epochs).")
@click.option("--scst-epochs", type=int, default=None, help="SCST epochs after XE (scst.epochs).")
@click.option("--skip-missing", is_flag=True, help="Drop images absent from the store instead of failing.")
@click.option("--device", default=None, help="cpu, cuda or auto (default: the config's, auto).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in OUT exactly where it stopped.")
def train_caption_cmd(model_name: str | None, features: Path, captions: Path, out: Path,
                      config_file: Path | None, epochs: int | None, scst_epochs: int | None,
                      skip_missing: bool, device: str | None, resume: bool) -> None:
    """Train a captioner (XE, then optional SCST with CIDEr-D) on FEATURES + CAPTIONS into OUT."""
    from butd.datasets.captions import CaptionDataError
    from butd.shards import StoreError
    from butd.train.caption import CaptionPaths, load_caption_config, train_caption

    overrides: dict[str, Any] = {}
    if model_name is not None:
        overrides["model_name"] = model_name
    if epochs is not None:
        overrides["xe"] = {"epochs": epochs}
    if scst_epochs is not None:
        overrides["scst"] = {"epochs": scst_epochs}
    if device is not None:
        overrides["device"] = device
    try:
        cfg = load_caption_config(config_file, overrides)
        paths = CaptionPaths(str(features), str(captions))
        summary = train_caption(cfg, paths, out, skip_missing=skip_missing, resume=resume, echo=click.echo)
    except (CaptionDataError, StoreError, ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    score = summary.get("val_cider_d")
    click.echo(f"wrote {out} (model {cfg.model_name}"
               + (f", val CIDEr-D {score:.3f})" if score is not None else ")"))


@click.command("eval-caption")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True)
@click.option("--beam", default=None, type=int, help="Beam width (1 = greedy); default: the run's decode config.")
@click.option("--device", default="cpu", show_default=True)
def eval_caption_cmd(run: Path, split: str, beam: int | None, device: str) -> None:
    """Caption SPLIT with RUN's model; write RUN/eval_SPLIT.json and RUN/captions_SPLIT.json."""
    from butd.datasets.captions import CaptionDataError
    from butd.shards import StoreError

    try:
        report = eval_caption(run, split, beam, device=device)
    except (CaptionDataError, StoreError, ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    shown = " ".join(f"{k}={v:.3f}" for k, v in report["metrics"].items() if isinstance(v, float))
    click.echo(f"{split} ({report['n_images']} images, beam {report['beam']}): {shown}")
    for reason in report["skipped"].values():
        click.echo(reason)
