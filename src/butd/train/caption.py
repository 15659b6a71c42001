"""Caption trainer: cross-entropy (teacher forcing), then optional SCST with a CIDEr-D reward.

A run directory (RUNS.md) holds config.yaml, run.json, vocab.json, xe/ and scst/ (each with metrics.jsonl
and checkpoints/{last,best}.pt from ``butd.train.loop.fit``, for resuming) and checkpoints/{last,best}.pt,
the run's weights: best is the best validation CIDEr-D checkpoint of the last phase that ran.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from butd.config import load_config, to_plain
from butd.datasets.captions import (
    CaptionDataError,
    CaptionDataset,
    CaptionImage,
    DataConfig,
    collate_captions,
    load_karpathy,
    split_images,
)
from butd.datasets.vocab import Vocab
from butd.evaluate.cider import CiderD
from butd.models.caption_base import CaptionModel
from butd.models.decoding import DecodeConfig, decode
from butd.models.registry import build_caption_model
from butd.shards import FeatureStore
from butd.train import distributed as ddp
from butd.train.checkpoint import load_checkpoint, save_checkpoint
from butd.train.loop import LoopConfig, LoopState, fit
from butd.train.progress import terminal_bar
from butd.train.run_format import checkpoint_meta, read_run, resolve_data, store_facts, write_run
from butd.train.scheduled_sampling import ScheduledSampling
from butd.train.schedules import ScheduleConfig, ScheduledSamplingConfig
from butd.train.scst import ScstConfig, ScstObjective, reward_refs, tokens_to_text

__all__ = ["CaptionPaths", "CaptionTrainConfig", "cider_of", "generate_captions", "load_caption_config",
           "load_caption_run", "train_caption"]


@dataclass(frozen=True)
class CaptionTrainConfig:
    """Everything a caption run needs besides file paths; YAML files override it key by key."""

    model_name: str = "updown"  # a key of butd.models.registry.CAPTION_MODELS
    model: dict[str, Any] = field(default_factory=dict)  # overrides of that model's config dataclass
    data: DataConfig = field(default_factory=DataConfig)
    # defaults: self-critical.pytorch configs/updown/updown.yml + opts.py (see RECIPES.md)
    xe: LoopConfig = field(default_factory=lambda: LoopConfig(
        epochs=30, batch_size=50, lr=5e-4, grad_clip=0.1, clip_mode="value", monitor="CIDEr-D", log_every=100,
        schedule=ScheduleConfig(name="step", unit="epochs", decay_start=0, decay_every=3, gamma=0.8)))
    scheduled_sampling: ScheduledSamplingConfig = field(default_factory=lambda: ScheduledSamplingConfig(start=0))
    scst: LoopConfig = field(default_factory=lambda: LoopConfig(
        epochs=0, batch_size=10, lr=5e-5, grad_clip=0.1, clip_mode="value", monitor="CIDEr-D", log_every=100))
    scst_objective: ScstConfig = field(default_factory=ScstConfig)
    # Adam of both phases: torch's defaults = self-critical opts.py optim_alpha / optim_beta / optim_epsilon;
    # its Noam runs (get_std_opt) use 0.9 / 0.98 and 1e-9, kept into SCST by loading optimizer.pth
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # eval / caption: the run's decoding
    val_max_images: int = 0  # images used for the per-epoch validation CIDEr-D (0 = all)
    eval_batch_size: int = 100
    device: str = "auto"  # "cpu", "cuda" or "auto"


@dataclass(frozen=True)
class CaptionPaths:
    """Input files of a run."""

    features: str  # a FeatureStore directory (region or grid)
    captions: str  # a Karpathy split JSON


def load_caption_config(yaml_path: str | Path | None = None,
                        overrides: dict[str, Any] | None = None) -> CaptionTrainConfig:
    """Defaults, then the YAML file's keys, then ``overrides`` (nested dicts); unknown keys raise."""
    return load_config(CaptionTrainConfig, yaml_path, overrides)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_captions)


@torch.no_grad()
def generate_captions(model: CaptionModel, dataset: CaptionDataset | Subset, vocab: Vocab, cfg: DecodeConfig,
                      batch_size: int = 100, device: str | torch.device = "cpu") -> dict[str, str]:
    """image id -> decoded caption for every image of a per-image dataset (model put in eval mode)."""
    was_training = model.training
    model.eval()
    out: dict[str, str] = {}
    try:
        for batch in terminal_bar(_loader(dataset, batch_size), "captioning"):
            tokens = decode(model, batch["features"].to(device), batch["mask"].to(device), cfg, vocab.words)
            out.update(zip(batch["image_ids"], tokens_to_text(tokens.cpu(), vocab), strict=True))
    finally:
        model.train(was_training)
    return out


def cider_of(model: CaptionModel, dataset: CaptionDataset, vocab: Vocab, scorer: CiderD,
             cfg: DecodeConfig = DecodeConfig(method="greedy"), batch_size: int = 100,
             device: str | torch.device = "cpu") -> float:
    """Mean CIDEr-D of the model's captions for a per-image dataset."""
    preds = generate_captions(model, dataset, vocab, cfg, batch_size, device)
    refs = {im.image_id: im.refs for im in dataset.images}
    return scorer.score(preds, refs)[0]


def _best_into(model: CaptionModel, ckpt_dir: Path) -> str | None:
    for name in ("best.pt", "last.pt"):
        if (ckpt_dir / name).is_file():
            model.load_state_dict(load_checkpoint(ckpt_dir / name).model)
            return str(ckpt_dir / name)
    return None


def _split_or_none(images: Sequence[CaptionImage], split: str) -> list[CaptionImage] | None:
    try:
        return split_images(images, split)
    except CaptionDataError:
        return None


def _last(phase_dir: Path):
    path = phase_dir / "checkpoints" / "last.pt"
    return load_checkpoint(path) if path.is_file() else None


def train_caption(cfg: CaptionTrainConfig, paths: CaptionPaths, out_dir: str | Path, *,
                  skip_missing: bool = False, resume: bool = False,
                  echo: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run XE (``cfg.xe.epochs``) then SCST (``cfg.scst.epochs``) and write the run directory.

    ``resume`` continues an interrupted run from its phases' ``last.pt`` exactly (same losses on CPU);
    once SCST has a checkpoint, XE is finished. Returns the run summary (also ``out_dir/run.json``).
    Under torchrun every rank calls this alike (see :mod:`butd.train.distributed`); rank 0 writes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info, device = ddp.setup(_device(cfg.device))
    store = FeatureStore(paths.features)
    images = load_karpathy(paths.captions)
    train_imgs = split_images(images, "train", cfg.data.train_splits)
    val_imgs = _split_or_none(images, "val")
    if resume and (out_dir / "vocab.json").is_file():
        vocab = Vocab.load(out_dir / "vocab.json")
    else:
        vocab = Vocab.build((t for im in train_imgs for t in im.tokens), cfg.data.min_count)
        if info.is_main:
            vocab.save(out_dir / "vocab.json")
    import yaml

    if info.is_main:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_plain(cfg), sort_keys=False), encoding="utf-8")
    train_ds = CaptionDataset(train_imgs, store, vocab, cfg.data, skip_missing=skip_missing)
    val_ds = None
    if val_imgs is not None:
        val_imgs = val_imgs[: cfg.val_max_images] if cfg.val_max_images > 0 else val_imgs
        val_ds = CaptionDataset(val_imgs, store, vocab, cfg.data, per_caption=False,
                                skip_missing=skip_missing)

    torch.manual_seed(cfg.xe.seed)
    model = build_caption_model(cfg.model_name, len(vocab), store.feature_dim, cfg.model).to(device)
    greedy = DecodeConfig(method="greedy", max_len=cfg.decode.max_len)
    evaluate = None
    if val_ds is not None:
        val_refs = {im.image_id: im.refs for im in val_ds.images}
        val_scorer = CiderD(list(val_refs.values())) if info.is_main else None  # scores once, on rank 0
        val_mine = Subset(val_ds, ddp.shard_indices(len(val_ds), info))

        def _val_cider(items: list[Any]) -> dict[str, float]:
            preds = dict(items)
            return {"CIDEr-D": val_scorer.score({k: preds[k] for k in val_refs}, val_refs)[0]}

        def evaluate(m: torch.nn.Module) -> dict[str, float]:
            inner = m.model if isinstance(m, ScstObjective | ScheduledSampling) else m
            preds = generate_captions(inner, val_mine, vocab, greedy, cfg.eval_batch_size, device)
            return ddp.gathered_metrics(list(preds.items()), _val_cider)

    # every checkpoint is self-describing: config, vocabulary and the store it was trained on
    store_info = store_facts(store)
    meta = checkpoint_meta("caption", cfg.model_name, to_plain(cfg), vocab.words, store_info)
    summary: dict[str, Any] = {
        "skip_missing": skip_missing, "vocab_size": len(vocab), "train_images": len(train_ds.images),
        "train_pairs": len(train_ds), "val_images": len(val_ds) if val_ds else 0,
        "world_size": info.world_size, "phases": {}}
    state: LoopState | None = None
    scst_ckpt = _last(out_dir / "scst") if resume else None
    if cfg.xe.epochs > 0 and scst_ckpt is not None:  # SCST had started: XE is finished
        summary["phases"]["xe"] = {"resumed": "finished in an earlier invocation"}
    elif cfg.xe.epochs > 0:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.xe.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
        ss = ScheduledSampling(model, cfg.scheduled_sampling)
        state = fit(ss, opt, train_ds, ss.loss, cfg.xe, out_dir / "xe", evaluate=evaluate, meta=meta,
                    callbacks=[ss], resume=_last(out_dir / "xe") if resume else None,
                    collate_fn=collate_captions, id_key="image_ids", device=device, echo=echo)
        weights = _best_into(model, out_dir / "xe" / "checkpoints")
        summary["phases"]["xe"] = {**asdict(state), "weights": weights}
    if cfg.scst.epochs > 0:
        scst_ds = CaptionDataset(train_ds.images, store, vocab, cfg.data, per_caption=False)
        # df from the training references as the reward sees them (EOS or not): computed once on rank 0,
        # the same arrays on every rank
        eos = cfg.scst_objective.reward_eos
        scorer = CiderD.from_arrays(ddp.share_array_state(
            lambda: CiderD(reward_refs([im.refs for im in scst_ds.images], eos)).to_arrays()))
        objective = ScstObjective(model, scorer, vocab, cfg.scst_objective)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.scst.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
        state = fit(objective, opt, scst_ds, lambda out, batch: out, cfg.scst, out_dir / "scst",
                    evaluate=evaluate, meta=meta, resume=scst_ckpt, collate_fn=collate_captions,
                    id_key="image_ids", device=device, echo=echo)
        summary["phases"]["scst"] = {**asdict(state),
                                     "weights": _best_into(model, out_dir / "scst" / "checkpoints")}
    if evaluate is not None:
        summary["val_cider_d"] = evaluate(model)["CIDEr-D"]
    last_phase = "scst" if cfg.scst.epochs > 0 else "xe"
    if info.is_main:
        (out_dir / "checkpoints").mkdir(exist_ok=True)
        save_checkpoint(out_dir / "checkpoints" / "best.pt", model, None, step=state.step if state else 0,
                        epoch=state.epoch if state else 0, meta=meta)
        last = out_dir / last_phase / "checkpoints" / "last.pt"
        if last.is_file():
            shutil.copyfile(last, out_dir / "checkpoints" / "last.pt")
        write_run(out_dir, task="caption", model=cfg.model_name,
                  data={"features": paths.features, "captions": paths.captions}, store=store_info,
                  world_size=info.world_size, summary=summary)
    return summary


def load_caption_run(run_dir: str | Path, device: str | torch.device = "cpu", which: str = "best"
                     ) -> tuple[CaptionTrainConfig, CaptionModel, Vocab, dict[str, Any]]:
    """(config, model with the run's weights in eval mode, vocabulary, run.json) of a finished run."""
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    if info["task"] != "caption":
        from butd.errors import UserError

        raise UserError(f"this is a {info['task']} run, not a captioning run", run_dir,
                        "pass a run trained with a caption model", usage=True)
    cfg = load_caption_config(run_dir / "config.yaml")
    vocab = Vocab.load(run_dir / info["vocab"])
    ckpt = load_checkpoint(run_dir / info["checkpoints"][which])
    model = build_caption_model(cfg.model_name, len(vocab), int(ckpt.meta["feature_dim"]), cfg.model)
    model.load_state_dict(ckpt.model)
    return cfg, model.to(device).eval(), vocab, info


def caption_data(run_dir: str | Path, info: dict[str, Any], features: str | None = None,
                 captions: str | None = None) -> tuple[str, str]:
    """(feature store, Karpathy JSON) of a run, where they are now (``--features/--captions`` win)."""
    return (resolve_data(run_dir, info, "features", features), resolve_data(run_dir, info, "captions", captions))
