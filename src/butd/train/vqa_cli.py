"""Click commands for the VQA trainer: ``butd train --model vqa ...`` and ``butd eval RUN --split val``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

__all__ = ["eval_vqa", "eval_vqa_cmd", "train_vqa_cmd"]


@click.command("train")
@click.option(
    "--model",
    "model",
    type=click.Choice(["vqa"]),
    default="vqa",
    show_default=True,
    help="Which trainer to run.",
)
@click.option(
    "--features",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="Feature store directory (region or grid).",
)
@click.option(
    "--questions",
    type=click.Path(exists=True, dir_okay=False),
    multiple=True,
    required=True,
    help="VQA v2 questions JSON (repeat for extra QA pairs).",
)
@click.option(
    "--annotations",
    type=click.Path(exists=True, dir_okay=False),
    multiple=True,
    required=True,
    help="VQA v2 annotations JSON, one per --questions.",
)
@click.option("--val-questions", type=click.Path(exists=True, dir_okay=False), multiple=True)
@click.option("--val-annotations", type=click.Path(exists=True, dir_okay=False), multiple=True)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run directory to create.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML overrides (see configs/vqa.yaml).",
)
@click.option("--epochs", type=int, help="Override loop.epochs.")
@click.option("--glove", type=click.Path(exists=True, dir_okay=False), help="GloVe text file (300-d).")
@click.option("--min-answer-count", type=int, help="Override data.min_answer_count (default 9).")
@click.option("--skip-missing", is_flag=True, help="Drop questions whose image is not in the store.")
@click.option("--device", help="cpu, cuda or auto.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoints/last.pt.")
def train_vqa_cmd(
    model: str,
    features: str,
    questions: tuple[str, ...],
    annotations: tuple[str, ...],
    val_questions: tuple[str, ...],
    val_annotations: tuple[str, ...],
    out: str,
    config_path: str | None,
    epochs: int | None,
    glove: str | None,
    min_answer_count: int | None,
    skip_missing: bool,
    device: str | None,
    resume: bool,
) -> None:
    """Train the Up-Down VQA model on a feature store and VQA v2 files."""
    from butd.train.loop import NonFiniteLossError
    from butd.train.vqa import VQAPaths, load_config, train_vqa

    overrides: dict[str, Any] = {}
    if epochs is not None:
        overrides.setdefault("loop", {})["epochs"] = epochs
    if min_answer_count is not None:
        overrides.setdefault("data", {})["min_answer_count"] = min_answer_count
    if skip_missing:
        overrides.setdefault("data", {})["skip_missing"] = True
    if device:
        overrides["device"] = device
    if len(val_questions) != len(val_annotations) and val_annotations:
        raise click.UsageError("give one --val-annotations per --val-questions")
    try:
        cfg = load_config(config_path, overrides)
        paths = VQAPaths(
            features=features,
            questions=tuple(questions),
            annotations=tuple(annotations),
            val_questions=tuple(val_questions),
            val_annotations=tuple(val_annotations),
            glove=glove,
        )
        state = train_vqa(cfg, paths, out, resume=resume, echo=click.echo)
    except NonFiniteLossError as err:
        raise click.ClickException(str(err)) from err
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    best = f", best accuracy {state.best:.2f} (epoch {state.best_epoch})" if state.best is not None else ""
    click.echo(f"done: {state.step} steps, {state.epoch} epochs{best}; run in {Path(out)}")


def eval_vqa(run: str | Path, split: str = "val", vqa_eval: str = "2017") -> dict[str, Any]:
    """Evaluate a VQA run; prints overall + per answer type, writes RUN/eval_<split>.json and
    RUN/results_<split>.json (official results format)."""
    from butd.train.vqa import eval_run

    return eval_run(run, split, echo=click.echo, version=vqa_eval)


VQA_EVAL_OPTION = click.option(
    "--vqa-eval", type=click.Choice(["2017", "master"]), default="2017", show_default=True,
    help="Official evaluator rules: 2017 (vqaEval.py of the challenge and papers) or master (2021 fix).")


@click.command("eval")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@VQA_EVAL_OPTION
def eval_vqa_cmd(run: str, split: str, vqa_eval: str) -> None:
    """Evaluate a trained VQA run with the official accuracy."""
    try:
        eval_vqa(run, split, vqa_eval)
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
