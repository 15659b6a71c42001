"""Commands that span tasks or stages: `train`/`eval` dispatch, `caption`/`answer` new images, `report`.

This module and cli.py are the only places where extraction and training meet: a run records the
feature store it was trained on, whose manifest names the extractor, so a new image goes through
the same extractor before the model sees it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

CAPTION_MODELS = ("updown", "sat-soft", "sat-hard")
TASK_MODELS = {**dict.fromkeys(CAPTION_MODELS, "caption"), "vqa": "vqa"}


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)


def _model_arg(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a == "--model" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--model="):
            return a.split("=", 1)[1]
    return None


@click.command("train", add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def train_cmd(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Train a model: butd train --model updown|sat-soft|sat-hard|vqa ... (add --help after --model)."""
    model = _model_arg(list(args))
    if model is None:
        click.echo("usage: butd train --model updown|sat-soft|sat-hard|vqa [OPTIONS]\n"
                   "  captioning: --features STORE --captions KARPATHY.json --out RUN [--epochs N] [--scst-epochs M]\n"
                   "  vqa:        --features STORE --questions Q.json --annotations A.json --out RUN\n"
                   "  `butd train --model M --help` lists every option of that trainer.")
        ctx.exit(0 if "--help" in args or "-h" in args else 2)
    if TASK_MODELS.get(model) == "vqa":
        from butd.train.vqa_cli import train_vqa_cmd as target
    elif TASK_MODELS.get(model) == "caption":
        from butd.train.caption_cli import train_caption_cmd as target
    else:
        raise click.BadParameter(f"unknown model {model!r}; choose from {', '.join(TASK_MODELS)}",
                                 param_hint="--model")
    with target.make_context(ctx.info_name, list(args), parent=ctx.parent) as sub:
        target.invoke(sub)


def _run_info(run: Path) -> dict[str, Any]:
    path = run / "run.json"
    if not path.is_file():
        raise click.ClickException(f"{run}: no run.json, so this is not a finished butd run")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{path}: unreadable ({exc})") from None
    info.setdefault("task", "vqa" if "answers" in info or info.get("model_name") == "vqa" else "caption")
    return info


@click.command("eval")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default=None, help="test (captioning default) or val (VQA default).")
@click.option("--beam", default=3, show_default=True, type=int, help="Beam width for captioning (1 = greedy).")
@click.option("--device", default="cpu", show_default=True)
def eval_cmd(run: Path, split: str | None, beam: int, device: str) -> None:
    """Evaluate RUN: COCO caption metrics or the official VQA accuracy; writes RUN/eval_SPLIT.json."""
    info = _run_info(run)
    try:
        if info["task"] == "vqa":
            from butd.train.vqa import eval_run

            eval_run(run, split or "val", echo=click.echo)
            return
        from butd.train.caption_cli import eval_caption

        report = eval_caption(run, split or "test", beam, device=device)
    except (ValueError, OSError, KeyError) as exc:
        raise _fail(exc) from None
    click.echo(f"{report['model_name']} on {report['split']} ({report['n_images']} images, beam {beam})")
    for name, value in report["metrics"].items():
        if isinstance(value, float):  # fractions, shown x100 as in the papers
            click.echo(f"  {name:10s} {100 * value:6.1f}")
    for name, why in report.get("skipped", {}).items():
        click.echo(f"  {why}" if str(why).startswith(name) else f"  {name} skipped: {why}")
    click.echo(f"wrote {run / ('eval_' + report['split'] + '.json')} and {run / report['captions']}")


def _store_extractor(features: str, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """The extractor a run's features came from: as the run recorded it, else from the store's manifest."""
    from butd.extract.registry import names
    from butd.shards import read_manifest

    extractor = recorded or read_manifest(features).get("extractor") or {}
    if extractor.get("name") not in names() or not isinstance(extractor.get("config"), dict):
        raise click.ClickException(
            f"the run's features ({features}) were made by {extractor.get('name')!r}, which cannot run on new "
            "images; train on a store made by `butd extract` to caption or answer about new images")
    return extractor


def _features_of(images: list[Path], extractor: dict[str, Any], device: str) -> list[tuple[Path, dict]]:
    from butd.extract.single import extract_files

    out = []
    for path, (rec, reason) in zip(images, extract_files(extractor["config"], images, device=device,
                                                             weights_sha256=extractor.get("weights_sha256"))):
        if rec is None:
            click.echo(f"{path}: skipped ({reason})", err=True)
        else:
            out.append((path, rec))
    return out


@click.command("caption")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--beam", default=3, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True)
def caption_cmd(run: Path, images: tuple[Path, ...], beam: int, device: str) -> None:
    """Caption new IMAGES end to end: the run's extractor, then its model. One line per image."""
    import torch

    from butd.models.decoding import DecodeConfig, decode
    from butd.train.caption import load_caption_run
    from butd.train.scst import tokens_to_text

    info = _run_info(run)
    if info["task"] != "caption":
        raise click.ClickException(f"{run} is a {info['task']} run; `butd caption` needs a captioning run")
    cfg, model, vocab, info = load_caption_run(run, device)
    extractor = _store_extractor(info["features"], info.get("extractor"))
    dcfg = DecodeConfig(method="beam" if beam > 1 else "greedy", beam=beam, max_len=cfg.data.max_len)
    for path, rec in _features_of(list(images), extractor, device):
        feats = torch.from_numpy(np.array(rec["features"][: cfg.data.max_boxes], dtype=np.float32))[None]
        mask = torch.ones(feats.shape[:2], dtype=torch.bool)
        with torch.no_grad():
            tokens = decode(model, feats.to(device), mask.to(device), dcfg)
        click.echo(f"{path}\t{tokens_to_text(tokens.cpu(), vocab)[0]}")


@click.command("answer")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("question")
@click.option("--top", default=5, show_default=True, type=int)
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the attention picture (default: IMAGE stem + _attention.png here).")
@click.option("--device", default="cpu", show_default=True)
def answer_cmd(run: Path, image: Path, question: str, top: int, png: Path | None, device: str) -> None:
    """Answer QUESTION about IMAGE with a VQA run: top answers with scores, attention as a PNG."""
    import torch
    from PIL import Image

    from butd.evaluate.attention_viz import answer_figure
    from butd.evaluate.region_names import box_labels, find_names
    from butd.shards import read_manifest
    from butd.train.vqa import load_run

    if _run_info(run)["task"] != "vqa":
        raise click.ClickException(f"{run} is not a VQA run")
    model, cfg, vocab, answers, info = load_run(run)
    extractor = _store_extractor(info["paths"]["features"])
    found = _features_of([image], extractor, device)
    if not found:
        raise click.ClickException(f"{image}: could not be read")
    rec = found[0][1]
    feats = torch.from_numpy(np.array(rec["features"], dtype=np.float32))[None]
    batch = {"tokens": torch.from_numpy(vocab.encode(question, cfg.data.max_question_len))[None],
             "features": feats, "mask": torch.ones(feats.shape[:2], dtype=torch.bool)}
    res = model.answer(batch, answers, k=top)[0]
    for a, s in zip(res["answers"], res["scores"]):
        click.echo(f"{s:6.3f}  {a}")
    png = png or Path(f"{image.stem}_attention.png")
    with Image.open(image) as im:
        rgb = im.convert("RGB")
    grid = (int(rec["grid_h"]), int(rec["grid_w"])) if "grid_h" in rec else None
    names = find_names(info["paths"]["features"], read_manifest(info["paths"]["features"]))
    answer_figure(rgb, question, res["answers"], res["scores"], np.asarray(res["attention"]), boxes=rec.get("boxes"),
                  grid=grid, box_labels=box_labels(rec, names) if grid is None else ()).save(png)
    click.echo(f"attention over {'the grid' if grid else 'the boxes'} written to {png}")


@click.command("report")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default=None, help="test (captioning default) or val (VQA default).")
@click.option("--n", "n_images", default=50, show_default=True, type=int)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True)
@click.option("--images-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Where the images are (default: the store's source root).")
def report_cmd(run: Path, split: str | None, n_images: int, out: Path, images_root: Path | None) -> None:
    """Write a self-contained HTML page: images, text, and the attention of every word or question."""
    from butd.evaluate.report import write_report
    from butd.report_items import caption_items, vqa_items

    info = _run_info(run)
    split = split or ("val" if info["task"] == "vqa" else "test")
    try:
        build = vqa_items if info["task"] == "vqa" else caption_items
        items = build(run, split, n_images, images_root)
    except (ValueError, OSError, KeyError) as exc:
        raise _fail(exc) from None
    write_report(items, out, title=f"butd {info['task']} report: {run.name}, {split} split")
    unit = "questions" if info["task"] == "vqa" else "images"
    click.echo(f"wrote {out} ({len(items)} {unit}, pictures embedded)")
