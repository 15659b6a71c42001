"""Reading a run directory (RUNS.md) that ``butd.train`` wrote: one :class:`Run` for both tasks.

``train/`` writes runs; the task layer reads them. Every run is loaded the same way: run.json says the task,
the checkpoint carries the merged config, the vocabulary (and the VQA answers) and the store's feature width,
and the task's ``build_model`` makes the model that the weights load into.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from butd.config import load_config
from butd.datasets.vocab import Vocab
from butd.errors import UserError
from butd.train.checkpoint import load_checkpoint
from butd.train.run_format import read_run, resolve_data

__all__ = ["Run", "load", "read_info"]


@dataclass
class Run:
    """A trained run: its model (eval mode, on the device asked for), config, vocabulary, VQA answers
    (None for captioning) and run.json."""

    path: Path
    task: str
    model: Any
    config: Any
    vocab: Vocab
    info: dict[str, Any]
    answers: list[str] | None = None
    device: str = "cpu"

    def data(self, key: str, override: Any = None) -> Any:
        """Where the run's input ``key`` (features, captions, questions, ...) is now (``override`` wins)."""
        return resolve_data(self.path, self.info, key, override)

    @property
    def store_kind(self) -> str:
        return self.info["store"]["kind"]


def read_info(path: str | Path, task: str | None = None) -> dict[str, Any]:
    """run.json of a run; ``task`` given: a run of another task is refused with one line."""
    info = read_run(path)
    if task is not None and info["task"] != task:
        raise UserError(f"this is a {info['task']} run, not a {task} run", path,
                        f"pass a run trained with a {task} model", usage=True)
    return info


def load(path: str | Path, device: str, *, task: str, config_class: type, vocab_kind: str,
         build: Callable[[Any, Vocab, list[str] | None, int], Any], which: str = "best",
         migrate: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Run:
    """The run at ``path`` with the weights of ``checkpoints/{which}.pt`` (a task module's ``load_run``);
    ``migrate`` fills in config keys that older checkpoints did not have."""
    path = Path(path)
    info = read_info(path, task)
    if info.get("status", "finished") != "finished":
        raise UserError("the run has not finished training", path,
                        "finish it first (`butd train ... --resume`)", usage=True)
    ckpt_path = path / info["checkpoints"][which]
    if not ckpt_path.is_file():
        raise UserError(f"the run has no {ckpt_path.name}", ckpt_path, "train the run again", usage=True)
    ckpt = load_checkpoint(ckpt_path)
    cfg = load_config(config_class, None, (migrate or dict)(ckpt.meta["config"]))
    vocab = Vocab(ckpt.meta["vocab"], vocab_kind)
    answers = list(ckpt.meta["answers"]) if ckpt.meta.get("answers") is not None else None
    model = build(cfg, vocab, answers, int(ckpt.meta["feature_dim"]))
    model.load_state_dict(ckpt.model)
    return Run(path, task, model.to(device).eval(), cfg, vocab, info, answers, str(device))
