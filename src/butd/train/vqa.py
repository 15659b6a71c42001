"""VQA trainer: config, data preparation, training, prediction and evaluation of a run directory.

A run directory (RUNS.md) holds config.yaml, run.json, vocab.json, answers.json, metrics.jsonl,
checkpoints/{last,best}.pt and, after evaluation, eval_<split>.json + results_<split>.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from butd.config import load_config as _load_config
from butd.config import to_plain
from butd.datasets.vqa import (
    Vocab,
    VQADataConfig,
    VQADataset,
    VQAExample,
    build_answer_set,
    build_question_vocab,
    candidate_examples,
    join_store,
    load_vqa,
)
from butd.devices import resolve_device
from butd.errors import UserError
from butd.evaluate.vqa_accuracy import vqa_accuracy
from butd.models.inference import answer_ids
from butd.models.registry import MODELS, task_of
from butd.models.updown_vqa import UpDownVQAConfig, load_glove, vqa_loss
from butd.registry import Entry, Registry
from butd.shards import FeatureStore
from butd.train import distributed as ddp
from butd.train.checkpoint import load_checkpoint
from butd.train.loop import LoopConfig, check_loop, fit
from butd.train.progress import terminal_bar
from butd.train.run_format import begin_run, checkpoint_meta, finish_run, store_facts

__all__ = ["OPTIMIZERS", "VQAPaths", "VQATrainConfig", "annotations_of", "build_model", "check_vqa_config",
           "load_config", "predict", "prepare_data", "train_vqa", "with_layer_forms"]


@dataclass(frozen=True)
class VQATrainConfig:
    """Everything a VQA run needs besides file paths; YAML files override it key by key."""

    model_name: str = "vqa"  # a VQA model of butd.models.registry.MODELS
    # = configs/vqa.yaml: bottom-up-attention-vqa's model (ReLU + weight norm, product attention, widths 1024 /
    # 2048, dropout 0.2 / 0.5), chosen on the toy world for accuracy and speed (BENCHMARKS.md, RECIPES.md);
    # UpDownVQAConfig() itself is the paper's (configs/vqa-paper.yaml)
    model: UpDownVQAConfig = field(default_factory=lambda: UpDownVQAConfig(
        hidden_dim=1024, attention_dim=1024, joint_dim=1024, classifier_dim=2048, dropout=0.2, layer="relu_wn",
        attention="product", classifier_dropout=0.5))
    data: VQADataConfig = field(default_factory=VQADataConfig)
    # bottom-up-attention-vqa (main.py, train.py): 30 epochs, batch 512, Adamax at its default 2e-3, constant,
    # global-norm clip 0.25; butd: an epoch has >= 50 steps (smaller batches on small sets, see RECIPES.md)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(
        epochs=30, batch_size=512, min_steps_per_epoch=50, lr=2e-3, grad_clip=0.25, clip_mode="norm"))
    optimizer: str = "adamax"
    weight_decay: float = 0.0
    eval_batch_size: int = 512
    device: str = "cpu"  # "cpu", "cuda" or "auto"


@dataclass(frozen=True)
class VQAPaths:
    """Input files of a run (lists allow extra QA pairs in the same layout)."""

    features: str
    questions: tuple[str, ...]
    annotations: tuple[str, ...]
    val_questions: tuple[str, ...] = ()
    val_annotations: tuple[str, ...] = ()
    glove: str | None = None


OPTIMIZERS = Registry("optimizer", {
    "adamax": Entry(None, "torch.optim:Adamax", "Adamax (bottom-up-attention-vqa's choice)"),
    "adam": Entry(None, "torch.optim:Adam", "Adam"),
    "adamw": Entry(None, "torch.optim:AdamW", "AdamW (decoupled weight decay)"),
})


def load_config(
    yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> VQATrainConfig:
    """Defaults, then the YAML file's keys, then ``overrides`` (nested dicts)."""
    return _load_config(VQATrainConfig, yaml_path, overrides)


def prepare_data(
    cfg: VQATrainConfig, paths: VQAPaths, vocab: Vocab | None = None, answers: Sequence[str] | None = None
) -> tuple[VQADataset, VQADataset | None, Vocab, list[str], dict[str, Any]]:
    """Load questions, build (or reuse) vocab and answer candidates, join both splits to the store."""
    store = FeatureStore(paths.features)
    train = load_vqa(paths.questions, paths.annotations)
    val = load_vqa(paths.val_questions, paths.val_annotations or None) if paths.val_questions else []
    train, train_report = join_store(train, store, cfg.data.skip_missing)
    reports: dict[str, Any] = {"train": train_report}
    if val:
        val, reports["val"] = join_store(val, store, cfg.data.skip_missing)
    vocab = vocab or build_question_vocab(train)
    answers = (
        list(answers)
        if answers is not None
        else build_answer_set(candidate_examples(train, val, cfg.data.answers_from), cfg.data.min_answer_count)
    )
    train_ds = VQADataset(train, store, vocab, answers, cfg.data)
    val_ds = VQADataset(val, store, vocab, answers, cfg.data) if val else None
    return train_ds, val_ds, vocab, answers, reports


def check_vqa_config(cfg: VQATrainConfig, world_size: int = 1) -> None:
    """Every setting of the run, before any work starts."""
    vqa = [n for n in MODELS.names() if task_of(n) == "vqa"]
    if cfg.model_name not in vqa:
        raise UserError(f"{cfg.model_name!r} is not a VQA model", "model_name", f"choose one of {', '.join(vqa)}",
                        usage=True)
    OPTIMIZERS.entry(cfg.optimizer)
    check_loop(cfg.loop, "loop", world_size)
    if cfg.data.max_question_len < 1:
        raise UserError("data.max_question_len must be at least 1", cfg.data.max_question_len, "fix the value",
                        usage=True)


def _loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )


def predict(
    model: torch.nn.Module, dataset: VQADataset, batch_size: int = 512, device: str | torch.device = "cpu",
    indices: Sequence[int] | None = None,
) -> dict[int, str]:
    """Best answer per question id (of the examples at ``indices`` only, when given: one rank's shard)."""
    subset = dataset if indices is None else Subset(dataset, list(indices))
    out: dict[int, str] = {}
    for qids, best in answer_ids(model, terminal_bar(_loader(subset, batch_size), "answering"), device):
        out.update((q, dataset.answers[j]) for q, j in zip(qids, best, strict=True))
    return out


def annotations_of(examples: Sequence[VQAExample]) -> list[dict[str, Any]]:
    """The official evaluator's annotation rows of the annotated examples."""
    return [
        {
            "question_id": ex.question_id,
            "question_type": ex.question_type,
            "answer_type": ex.answer_type,
            "answers": [{"answer": a} for a in ex.answers],
        }
        for ex in examples
        if ex.answers
    ]


def build_model(cfg: VQATrainConfig, vocab: Vocab, answers: Sequence[str], feature_dim: int,
                glove: str | None = None) -> torch.nn.Module:
    """The run's VQA model (``MODELS[cfg.model_name]``), word embeddings from ``glove`` when given."""
    if cfg.model_name not in MODELS or task_of(cfg.model_name) != "vqa":
        vqa = [n for n in MODELS.names() if task_of(n) == "vqa"]
        raise UserError(f"unknown VQA model {cfg.model_name!r}", "model_name", f"choose one of {', '.join(vqa)}",
                        usage=True)
    emb = load_glove(glove, vocab.words, cfg.model.word_dim) if glove else None
    return MODELS.builder(cfg.model_name)(len(vocab), len(answers), feature_dim, cfg.model, emb)


def train_vqa(
    cfg: VQATrainConfig,
    paths: VQAPaths,
    out: str | Path,
    *,
    resume: bool = False,
    echo: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train into run directory ``out`` (``resume`` continues from out/checkpoints/last.pt); the summary.

    Under torchrun every rank calls this alike (see :mod:`butd.train.distributed`); rank 0 writes."""
    info, device = ddp.setup(torch.device(resolve_device(cfg.device)))
    check_vqa_config(cfg, info.world_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt") if resume else None
    vocab = Vocab(ckpt.meta["vocab"], "question") if ckpt else None
    answers = ckpt.meta["answers"] if ckpt else None
    train_ds, val_ds, vocab, answers, reports = prepare_data(cfg, paths, vocab, answers)
    for split, rep in reports.items():
        if rep["missing_questions"] and echo and info.is_main:
            echo(f"{split}: skipped {rep['missing_questions']} question(s) on {rep['missing_images']} "
                 "image(s) missing from the feature store")
    torch.manual_seed(cfg.loop.seed)
    model = build_model(cfg, vocab, answers, train_ds.feature_dim, paths.glove)
    if ckpt is None and hasattr(model, "init_answer_bias"):
        model.init_answer_bias(train_ds.answer_prior())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = OPTIMIZERS[cfg.optimizer](params, lr=cfg.loop.lr, weight_decay=cfg.weight_decay)
    store = store_facts(train_ds.store)
    if info.is_main:
        (out / "answers.json").write_text(json.dumps(answers, indent=1), encoding="utf-8")
        begin_run(out, cfg, vocab, task="vqa", model=cfg.model_name, store=store, data_report=reports,
                  num_answers=len(answers), vocab_size=len(vocab), world_size=info.world_size,
                  skip_missing=cfg.data.skip_missing,
                  data={"features": paths.features, "questions": paths.questions,
                        "annotations": paths.annotations, "val_questions": paths.val_questions,
                        "val_annotations": paths.val_annotations, "glove": paths.glove})
    meta = checkpoint_meta("vqa", cfg.model_name, to_plain(cfg), vocab.words, store, answers=answers)

    anns = annotations_of(val_ds.examples) if val_ds is not None else []
    val_mine = ddp.shard_indices(len(val_ds), info) if val_ds is not None else []

    def _val_accuracy(items: list[Any]) -> dict[str, float]:  # once, over every rank's predictions
        res = vqa_accuracy(dict(items), anns, question_ids=[a["question_id"] for a in anns])
        return {"accuracy": res["overall"], **{f"acc_{k}": v for k, v in res["per_answer_type"].items()}}

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        if val_ds is None or not anns:
            return {}
        preds = predict(m, val_ds, cfg.eval_batch_size, device, indices=val_mine)
        return ddp.gathered_metrics([[q, a] for q, a in preds.items()], _val_accuracy)

    def loss_fn(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": vqa_loss(outputs["logits"], batch["target"])}

    state = fit(model, optimizer, train_ds, loss_fn, cfg.loop, out, evaluate=evaluate if val_ds else None,
                meta=meta, resume=ckpt, device=device, echo=echo)
    summary = {"steps": state.step, "epochs": state.epoch, "best": state.best, "best_epoch": state.best_epoch,
               "stopped": state.stopped}
    if info.is_main:
        finish_run(out, summary)
    ddp.finish()
    return summary


def with_layer_forms(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config; one written before ``model.layer`` / ``attention`` existed had the paper's forms."""
    model = {"layer": "gated_tanh", "attention": "concat", "classifier_dropout": None, **config.get("model", {})}
    return {**config, "model": model}
