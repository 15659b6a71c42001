"""``butd train / eval / caption / answer / report``: thin commands over the task layer (butd.tasks)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from butd.cli.options import RegistryChoice, device_option, pick_device
from butd.errors import UserError

__all__ = ["answer_cmd", "caption_cmd", "eval_cmd", "report_cmd", "train_cmd"]

_MODELS = "butd.models.registry:MODELS"


def _file(**kw: Any) -> click.Path:
    return click.Path(exists=True, dir_okay=False, **kw)


@click.command("train")
@click.option("--model", required=True, type=RegistryChoice(_MODELS),
              help="Model to train; its task (captioning or VQA) comes from the model registry.")
@click.option("--features", required=True, type=click.Path(exists=True, file_okay=False),
              help="Feature store directory (region or grid).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--config", "config_file", type=_file(), help="YAML overrides of the task's train config.")
@click.option("--epochs", type=int, help="Epochs (captioning: the cross-entropy phase).")
@click.option("--skip-missing", is_flag=True, help="Drop images absent from the store instead of failing.")
@device_option
@click.option("--resume", is_flag=True, help="Continue an interrupted run in OUT exactly where it stopped.")
@click.option("--overwrite", is_flag=True, help="Replace the butd run already in OUT (default: refuse).")
@click.option("--captions", type=_file(), help="[caption] Karpathy split JSON.")
@click.option("--scst-epochs", type=int, help="[caption] SCST epochs after cross-entropy.")
@click.option("--questions", type=_file(), multiple=True, help="[vqa] VQA v2 questions JSON (repeatable).")
@click.option("--annotations", type=_file(), multiple=True, help="[vqa] annotations JSON, one per --questions.")
@click.option("--val-questions", type=_file(), multiple=True, help="[vqa] validation questions JSON.")
@click.option("--val-annotations", type=_file(), multiple=True, help="[vqa] validation annotations JSON.")
@click.option("--glove", type=_file(), help="[vqa] GloVe text file (300-d) for the word embeddings.")
@click.option("--min-answer-count", type=int, help="[vqa] answer candidates: seen in at least N questions (9).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train on N local processes (torch DDP, 127.0.0.1 only; one GPU each on CUDA). The config's "
                   "batch_size is the global batch. On a cluster use torchrun (see TRAINING.md).")
@click.option("--verbose", is_flag=True, help="Show the launcher's own notices under --nproc (torchrun's banners).")
def train_cmd(model: str, features: str, out: str, config_file: str | None, resume: bool, overwrite: bool,
              device: str, nproc: int, verbose: bool, **options: Any) -> None:
    """Train MODEL on a feature store: captioning (XE, then optional SCST) or VQA, by the model's task."""
    from butd.tasks.training import run_training
    from butd.train.distributed import launched_rank
    from butd.train.progress import TrainingInterrupted

    options = {**options, "features": features, "device": device if nproc > 1 else pick_device(device)}
    try:
        summary = run_training(model, options, out, config=config_file, resume=resume, overwrite=overwrite,
                               nproc=nproc, verbose=verbose, echo=click.echo, warn=_warn)
    except TrainingInterrupted as stop:
        click.echo(str(stop), err=True)
        sys.exit(130)
    if isinstance(summary, int):  # the exit status of the --nproc workers
        raise SystemExit(summary)
    score = summary.get("val_cider_d", summary.get("best"))
    done = [f"model {model}", *([f"{summary['epochs']} epochs"] if "epochs" in summary else []),
            *([f"best validation score {score:.3f}"] if score is not None else [])]
    if launched_rank() == 0:
        click.echo(f"wrote {out} ({', '.join(done)})")


def _task_of_run(run: Path) -> str:
    from butd.train.run_format import read_run

    return read_run(run)["task"]


_RUN = click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
_FEATURES = click.option("--features", type=click.Path(exists=True, file_okay=False),
                         help="The run's feature store, if it moved since training.")
_CAPTIONS = click.option("--captions", type=_file(), help="[caption] the run's Karpathy JSON, if it moved.")
_QUESTIONS = click.option("--questions", type=_file(), multiple=True,
                          help="[vqa] questions of the split, if they moved (replaces the recorded ones).")
_ANNOTATIONS = click.option("--annotations", type=_file(), multiple=True,
                            help="[vqa] annotations of the split, if they moved.")


@click.command("eval")
@_RUN
@click.option("--split", default=None, help="test (captioning default) or val (VQA default).")
@click.option("--beam", default=None, type=int,
              help="Beam width for captioning (1 = greedy); default: the run's decode config.")
@click.option("--vqa-eval", type=RegistryChoice("butd.evaluate.vqa_accuracy:VERSIONS"), default=None,
              help="VQA runs: the official evaluator's 2017 rules (challenge, papers; the default) or master "
                   "(2021 fix).")
@click.option("--verbose", is_flag=True, help="Show the metric libraries' own output (pycocoevalcap, its Java tools).")
@click.option("--instances", type=_file(), multiple=True,
              help="[caption] COCO instance annotations for CHAIR and grounding (repeatable; default: "
                   "annotations/instances_*.json beside the captions file).")
@click.option("--chair-words", type=_file(),
              help="[caption] CHAIR word list JSON (default: chair_words.json beside the captions file, else the "
                   "80 COCO categories of Rohrbach et al.).")
@click.option("--boxes", type=_file(), help="[caption] ground-truth boxes per image for grounding "
                                            "(butd-grounding-boxes JSON; default: the instances).")
@click.option("--attention", is_flag=True,
              help="Write RUN/attention_SPLIT.json: the top-3 attended regions of each word (VQA: each question) "
                   "and, where ground-truth boxes are known, grounding accuracy and attention correctness.")
@device_option
@_FEATURES
@_CAPTIONS
@_QUESTIONS
@_ANNOTATIONS
def eval_cmd(run: Path, split: str | None, device: str, **options: Any) -> None:
    """Evaluate RUN: COCO caption metrics, CHAIR and diagnostics, or the official VQA accuracy (per answer and
    question type); writes RUN/eval_SPLIT.json."""
    from butd.tasks import task_module

    task_module(_task_of_run(run)).evaluate(run, split, device=pick_device(device), echo=click.echo, **options)


def _warn(message: str) -> None:
    click.echo(message, err=True)


@click.command("caption")
@_RUN
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--beam", default=None, type=int, help="Beam width (1 = greedy); default: the run's decode config.")
@device_option
def caption_cmd(run: Path, images: tuple[Path, ...], beam: int | None, device: str) -> None:
    """Caption new IMAGES end to end: the run's extractor, then its model. One line per image."""
    from butd.tasks import caption

    done = caption.predict(run, list(images), beam=beam, device=pick_device(device), warn=_warn)
    for path, text in done:
        click.echo(f"{path}\t{text}")
    if not done:
        raise UserError(f"none of the {len(images)} image(s) could be read", images[0],
                        "pass JPEG or PNG files (the reasons are above)")


@click.command("answer")
@_RUN
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("question")
@click.option("--top", default=5, show_default=True, type=int)
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the attention picture (default: IMAGE stem + _attention.png here).")
@device_option
def answer_cmd(run: Path, image: Path, question: str, top: int, png: Path | None, device: str) -> None:
    """Answer QUESTION about IMAGE with a VQA run: top answers with scores, attention as a PNG.

    Needs only the run directory: run.json records the extractor the run's features came from.
    """
    from butd.tasks import vqa

    res = vqa.predict(run, image, question, top=top, device=pick_device(device), warn=_warn)
    for a, s in zip(res["answers"], res["scores"]):
        click.echo(f"{s:6.3f}  {a}")
    png = png or Path(f"{image.stem}_attention.png")
    vqa.answer_picture(image, question, res).save(png)
    click.echo(f"attention over {'the grid' if res.get('grid') else 'the boxes'} written to {png}")


@click.command("report")
@_RUN
@click.option("--split", default=None, help="test (captioning default) or val (VQA default).")
@click.option("--n", "n_images", default=50, show_default=True, type=int)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True)
@click.option("--images-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Where the images are (default: the store's source root).")
@device_option
@_FEATURES
@_CAPTIONS
@_QUESTIONS
@_ANNOTATIONS
def report_cmd(run: Path, split: str | None, n_images: int, out: Path, images_root: Path | None, device: str,
               **options: Any) -> None:
    """Write a self-contained HTML page: images, text, and the attention of every word or question."""
    from butd.evaluate.report import write_report
    from butd.tasks import task_module

    task = _task_of_run(run)
    mod = task_module(task)
    split = split or mod.SPLIT
    items = mod.report_items(run, split, n_images, images_root, device=pick_device(device), **options)
    write_report(items, out, title=f"butd {task} report: {run.name}, {split} split")
    unit = "questions" if task == "vqa" else "images"
    click.echo(f"wrote {out} ({len(items)} {unit}, pictures embedded)")
