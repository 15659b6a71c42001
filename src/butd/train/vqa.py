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
from butd.evaluate.vqa_accuracy import vqa_accuracy
from butd.models.registry import MODELS, task_of
from butd.models.updown_vqa import UpDownVQAConfig, load_glove, vqa_loss
from butd.shards import FeatureStore
from butd.train import distributed as ddp
from butd.train.checkpoint import load_checkpoint
from butd.train.loop import LoopConfig, LoopState, fit
from butd.train.progress import terminal_bar
from butd.train.run_format import checkpoint_meta, read_run, resolve_data, store_facts, write_run

__all__ = [
    "OPTIMIZERS",
    "VQAPaths",
    "VQATrainConfig",
    "eval_run",
    "evaluate_dataset",
    "load_config",
    "load_run",
    "predict",
    "prepare_data",
    "train_vqa",
]


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


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamax": torch.optim.Adamax,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def load_config(
    yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> VQATrainConfig:
    """Defaults, then the YAML file's keys, then ``overrides`` (nested dicts)."""
    return _load_config(VQATrainConfig, yaml_path, overrides)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def _loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )


@torch.no_grad()
def predict(
    model: torch.nn.Module, dataset: VQADataset, batch_size: int = 512, device: str | torch.device = "cpu",
    indices: Sequence[int] | None = None,
) -> dict[int, str]:
    """Best answer per question id (of the examples at ``indices`` only, when given: one rank's shard)."""
    was_training = model.training
    model.eval()
    out: dict[int, str] = {}
    for batch in terminal_bar(_loader(dataset if indices is None else Subset(dataset, list(indices)), batch_size),
                              "answering"):
        batch = {k: v.to(device) for k, v in batch.items()}
        best = model(batch)["logits"].argmax(dim=1).tolist()
        for qid, j in zip(batch["question_id"].tolist(), best, strict=True):
            out[int(qid)] = dataset.answers[j]
    model.train(was_training)
    return out


def _annotations(examples: Sequence[VQAExample]) -> list[dict[str, Any]]:
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


def evaluate_dataset(
    model: torch.nn.Module, dataset: VQADataset, batch_size: int = 512, device: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[int, str]]:
    """Official accuracy on the annotated questions of ``dataset``, plus the predictions."""
    preds = predict(model, dataset, batch_size, device)
    anns = _annotations(dataset.examples)
    return vqa_accuracy(preds, anns, question_ids=[a["question_id"] for a in anns]), preds


def _build_model(
    cfg: VQATrainConfig, vocab: Vocab, answers: Sequence[str], feature_dim: int, glove: str | None
) -> torch.nn.Module:
    if cfg.model_name not in MODELS or task_of(cfg.model_name) != "vqa":
        vqa = [n for n in MODELS.names() if task_of(n) == "vqa"]
        raise ValueError(f"unknown VQA model {cfg.model_name!r} (known: {', '.join(vqa)})")
    emb = load_glove(glove, vocab.words, cfg.model.word_dim) if glove else None
    return MODELS.builder(cfg.model_name)(len(vocab), len(answers), feature_dim, cfg.model, emb)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def train_vqa(
    cfg: VQATrainConfig,
    paths: VQAPaths,
    out: str | Path,
    *,
    resume: bool = False,
    echo: Callable[[str], None] | None = print,
) -> LoopState:
    """Train into run directory ``out`` (``resume`` continues from out/checkpoints/last.pt).

    Under torchrun every rank calls this alike (see :mod:`butd.train.distributed`); rank 0 writes."""
    info, device = ddp.setup(_resolve_device(cfg.device))
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
    model = _build_model(cfg, vocab, answers, train_ds.feature_dim, paths.glove)
    if ckpt is None and hasattr(model, "init_answer_bias"):
        model.init_answer_bias(train_ds.answer_prior())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = OPTIMIZERS[cfg.optimizer](params, lr=cfg.loop.lr, weight_decay=cfg.weight_decay)
    import yaml

    store = store_facts(train_ds.store)
    if info.is_main:
        (out / "config.yaml").write_text(yaml.safe_dump(to_plain(cfg), sort_keys=False), encoding="utf-8")
        write_run(out, task="vqa", model=cfg.model_name, store=store, data_report=reports,
                  num_answers=len(answers), vocab_size=len(vocab), world_size=info.world_size,
                  data={"features": paths.features, "questions": paths.questions,
                        "annotations": paths.annotations, "val_questions": paths.val_questions,
                        "val_annotations": paths.val_annotations, "glove": paths.glove})
        _write_json(out / "answers.json", answers)
        vocab.save(out / "vocab.json")
    meta = checkpoint_meta("vqa", cfg.model_name, to_plain(cfg), vocab.words, store, answers=answers)

    anns = _annotations(val_ds.examples) if val_ds is not None else []
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

    return fit(
        model,
        optimizer,
        train_ds,
        loss_fn,
        cfg.loop,
        out,
        evaluate=evaluate if val_ds else None,
        meta=meta,
        resume=ckpt,
        device=device,
        echo=echo,
    )


def _with_layer_forms(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config; one written before ``model.layer`` / ``attention`` existed had the paper's forms."""
    model = {"layer": "gated_tanh", "attention": "concat", "classifier_dropout": None, **config.get("model", {})}
    return {**config, "model": model}


def load_run(
    run: str | Path, which: str = "best"
) -> tuple[torch.nn.Module, VQATrainConfig, Vocab, list[str], dict[str, Any]]:
    """Model (eval mode, CPU), config, vocab, answers and run.json of a run; falls back to last.pt."""
    run = Path(run)
    info = read_run(run)
    if info["task"] != "vqa":
        from butd.errors import UserError

        raise UserError(f"this is a {info['task']} run, not a VQA run", run, "pass a run trained with --model vqa",
                        usage=True)
    path = run / info["checkpoints"][which]
    if not path.exists():
        path = run / info["checkpoints"]["last"]
    ckpt = load_checkpoint(path)
    cfg = load_config(None, _with_layer_forms(ckpt.meta["config"]))
    vocab, answers = Vocab(ckpt.meta["vocab"], "question"), list(ckpt.meta["answers"])
    model = _build_model(cfg, vocab, answers, int(ckpt.meta["feature_dim"]), None)
    model.load_state_dict(ckpt.model)
    model.eval()
    return model, cfg, vocab, answers, info


def split_files(run: str | Path, info: dict[str, Any], split: str,
                questions: Sequence[str] | None = None, annotations: Sequence[str] | None = None) -> tuple[Any, Any]:
    """(questions, annotations or None) files of ``split`` ("val" or "train"), where they are now.

    ``questions`` / ``annotations`` (the ``--questions`` / ``--annotations`` options) replace the recorded ones.
    """
    from butd.errors import UserError

    if split not in ("train", "val"):
        raise UserError("a VQA run has the splits train and val", f"--split {split}",
                        "pass --split val (or train), or --questions/--annotations of another split with "
                        "--split val", usage=True)
    q_key, a_key = ("val_questions", "val_annotations") if split == "val" else ("questions", "annotations")
    if not questions and not info["data"].get(q_key):

        raise UserError(f"the run has no {split} questions", run,
                        "train it with --val-questions, or pass --questions", usage=True)
    qs = resolve_data(run, info, q_key, questions)
    ans = resolve_data(run, info, a_key, annotations) if annotations or not questions else None
    return qs, ans or None


def eval_run(
    run: str | Path, split: str = "val", echo: Callable[[str], None] | None = print, *,
    features: str | None = None, questions: Sequence[str] | None = None,
    annotations: Sequence[str] | None = None, device: str | torch.device = "cpu", version: str = "2017",
) -> dict[str, Any]:
    """Evaluate a run on its ``split`` ("val" or "train") with the official evaluator ``version``
    ("2017" or "master", see butd.evaluate.vqa_accuracy).

    Writes eval_<split>.json and results_<split>.json (official results format)."""
    run = Path(run)
    model, cfg, vocab, answers, info = load_run(run)
    questions, annotations = split_files(run, info, split, questions, annotations)
    store = FeatureStore(resolve_data(run, info, "features", features))
    model.to(device)
    examples = load_vqa(questions, annotations)
    examples, report = join_store(examples, store, cfg.data.skip_missing)
    dataset = VQADataset(examples, store, vocab, answers, cfg.data)
    preds = predict(model, dataset, cfg.eval_batch_size, device)
    anns = _annotations(examples)
    result: dict[str, Any] = {"split": split, "data": report}
    if anns:
        result.update(vqa_accuracy(preds, anns, question_ids=[a["question_id"] for a in anns], version=version))
    _write_json(run / f"eval_{split}.json", result)
    _write_json(run / f"results_{split}.json", [{"question_id": q, "answer": a} for q, a in preds.items()])
    if echo is not None and anns:
        echo(f"{split}: overall {result['overall']:.2f} on {result['num_questions']} questions "
             f"(official evaluator, {version} rules)")
        for k, v in sorted(result["per_answer_type"].items()):
            echo(f"  {k:8s} {v:.2f}")
    return result
