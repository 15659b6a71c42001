"""Caption trainer: cross-entropy (teacher forcing), then optional SCST with a CIDEr-D reward.

A run directory (RUNS.md) holds config.yaml, run.json, vocab.json, xe/ and scst/ (each with metrics.jsonl
and checkpoints/{last,best}.pt from ``butd.train.loop.fit``, for resuming) and checkpoints/{last,best}.pt,
the run's weights: best is the best validation CIDEr-D checkpoint of the last phase that ran.
"""

from __future__ import annotations

import os
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
from butd.datasets.vocab import Vocab, tokens_to_text
from butd.devices import resolve_device
from butd.errors import UserError
from butd.evaluate.cider import CiderD
from butd.models.caption_base import CaptionModel
from butd.models.decoding import DecodeConfig
from butd.models.inference import caption_tokens
from butd.models.registry import build_caption_model
from butd.shards import FeatureStore
from butd.train import distributed as ddp
from butd.train.checkpoint import load_checkpoint, save_checkpoint
from butd.train.loop import Callback, LoopConfig, LoopState, check_loop, fit
from butd.train.progress import terminal_bar
from butd.train.run_format import begin_run, checkpoint_meta, finish_run, store_facts
from butd.train.scheduled_sampling import ScheduledSampling
from butd.train.schedules import ScheduleConfig, ScheduledSamplingConfig
from butd.train.scst import ScstConfig, ScstObjective, reward_refs

__all__ = ["CaptionPaths", "CaptionTrainConfig", "check_caption_config", "generate_captions", "load_caption_config",
           "train_caption"]


@dataclass(frozen=True)
class CaptionTrainConfig:
    """Everything a caption run needs besides file paths; YAML files override it key by key."""

    model_name: str = "updown"  # a key of butd.models.registry.CAPTION_MODELS
    model: dict[str, Any] = field(default_factory=dict)  # overrides of that model's config dataclass
    # XE items are images with 5 captions each (self-critical seq_per_img), batched image-major
    data: DataConfig = field(default_factory=lambda: DataConfig(captions_per_image=5))
    # defaults: self-critical.pytorch configs/updown/updown.yml + opts.py (see RECIPES.md); the XE batch counts
    # items, so 10 images x 5 captions = 50 caption rows, and an epoch is one pass over the images
    xe: LoopConfig = field(default_factory=lambda: LoopConfig(
        epochs=30, batch_size=10, lr=5e-4, grad_clip=0.1, clip_mode="value", monitor="CIDEr-D", log_every=100,
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


def check_caption_config(cfg: CaptionTrainConfig, world_size: int = 1) -> None:
    """Every setting of every phase, before any work starts (so a run never stops between XE and SCST)."""
    from butd.config import merge_config
    from butd.models.decoding import DECODERS
    from butd.models.registry import MODELS, caption_models
    from butd.train.scst import SCST_BASELINES

    if cfg.model_name not in caption_models():
        raise UserError(f"{cfg.model_name!r} is not a caption model", "model_name",
                        f"choose one of {', '.join(caption_models())}", usage=True)
    merge_config(MODELS.config_class(cfg.model_name)(), cfg.model, f"model ({cfg.model_name})")  # unknown keys
    check_loop(cfg.xe, "xe", world_size)
    check_loop(cfg.scst, "scst", world_size)
    DECODERS.entry(cfg.decode.method)
    obj = cfg.scst_objective
    if cfg.scst.epochs > 0:
        SCST_BASELINES.entry(obj.baseline)
        if obj.samples < (2 if obj.baseline == "mean" else 1) or obj.max_len < 1 or not obj.temperature > 0:
            raise UserError("SCST needs samples >= 1 (>= 2 for the mean baseline), max_len >= 1, temperature > 0",
                            f"scst_objective = {obj}", "fix the values", usage=True)
    if cfg.data.max_len < 1 or cfg.data.max_boxes < 1 or cfg.data.min_count < 1:
        raise UserError("data.max_len, data.max_boxes and data.min_count must be at least 1", f"data = {cfg.data}",
                        "fix the values", usage=True)


def _loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_captions)


def generate_captions(model: CaptionModel, dataset: CaptionDataset | Subset, vocab: Vocab, cfg: DecodeConfig,
                      batch_size: int = 100, device: str | torch.device = "cpu") -> dict[str, str]:
    """image id -> caption for every image of a per-image dataset (validation during training)."""
    out: dict[str, str] = {}
    batches = terminal_bar(_loader(dataset, batch_size), "captioning")
    for ids, tokens in caption_tokens(model, batches, cfg, vocab.words, device):
        out.update(zip(ids, tokens_to_text(tokens, vocab), strict=True))
    return out


class _EpochCaptions(Callback):
    """Moves an image-major training set to each epoch's caption draw (also a resumed epoch's)."""

    def __init__(self, dataset: CaptionDataset) -> None:
        self.dataset = dataset

    def on_epoch_start(self, state: LoopState) -> None:
        self.dataset.set_epoch(state.epoch)


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
    info, device = ddp.setup(torch.device(resolve_device(cfg.device)))
    check_caption_config(cfg, info.world_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = FeatureStore(paths.features)
    images = load_karpathy(paths.captions)
    train_imgs = split_images(images, "train", cfg.data.train_splits)
    val_imgs = _split_or_none(images, "val")
    if resume and (out_dir / "vocab.json").is_file():
        vocab = Vocab.load(out_dir / "vocab.json")
    else:
        vocab = Vocab.build((t for im in train_imgs for t in im.tokens), cfg.data.min_count)
    train_ds = CaptionDataset(train_imgs, store, vocab, cfg.data, skip_missing=skip_missing, seed=cfg.xe.seed)
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
    if info.is_main:
        begin_run(out_dir, cfg, vocab, task="caption", model=cfg.model_name, store=store_info,
                  data={"features": paths.features, "captions": paths.captions}, world_size=info.world_size,
                  skip_missing=skip_missing)
    summary: dict[str, Any] = {
        "skip_missing": skip_missing, "vocab_size": len(vocab), "train_images": len(train_ds.images),
        "train_pairs": train_ds.rows_per_epoch, "val_images": len(val_ds) if val_ds else 0,
        "world_size": info.world_size, "phases": {}}
    state: LoopState | None = None
    scst_ckpt = _last(out_dir / "scst") if resume else None
    if cfg.xe.epochs > 0 and scst_ckpt is not None:  # SCST had started: XE is finished
        summary["phases"]["xe"] = {"resumed": "finished in an earlier invocation"}
    elif cfg.xe.epochs > 0:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.xe.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
        ss = ScheduledSampling(model, cfg.scheduled_sampling)
        state = fit(ss, opt, train_ds, ss.loss, cfg.xe, out_dir / "xe", evaluate=evaluate, meta=meta,
                    callbacks=[ss, _EpochCaptions(train_ds)], resume=_last(out_dir / "xe") if resume else None,
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
            tmp = out_dir / "checkpoints" / "last.pt.tmp"
            try:
                shutil.copyfile(last, tmp)
                os.replace(tmp, out_dir / "checkpoints" / "last.pt")
            finally:
                tmp.unlink(missing_ok=True)
        finish_run(out_dir, summary)
    ddp.finish()
    return summary
