"""One generic training loop (used by the VQA and captioning trainers).

``fit`` runs epochs over a dataset with a deterministic per-epoch shuffle, a pure-function LR schedule,
gradient clipping, a non-finite guard, callbacks (early stopping is one), console + metrics.jsonl logging
(TensorBoard too when installed) and checkpoints that resume exactly, even mid-epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from butd.registry import Entry, Registry
from butd.train.checkpoint import Checkpoint, restore_rng, save_checkpoint
from butd.train.progress import Progress, TrainingInterrupted

__all__ = ["SCHEDULES", "Callback", "EarlyStopping", "EpochSampler", "LoopConfig", "LoopState",
           "MetricsLogger", "NonFiniteLossError", "ScheduleConfig", "TrainingInterrupted", "fit", "lr_at"]


# --------------------------------------------------------------------------------------- LR schedules
@dataclass(frozen=True)
class ScheduleConfig:
    """LR schedule: ``name`` in SCHEDULES; steps are optimiser steps."""

    name: str = "constant"
    warmup_steps: int = 0
    decay_start: int = 0  # warmup_step: first step of the first decay
    decay_every: int = 0  # warmup_step: steps between decays (0 = never)
    gamma: float = 0.25
    min_lr: float = 0.0  # cosine floor


def _warmup(step: int, cfg: ScheduleConfig) -> float:
    return min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0


def lr_constant(step: int, base: float, cfg: ScheduleConfig, total: int) -> float:
    return base * _warmup(step, cfg)


def lr_warmup_step(step: int, base: float, cfg: ScheduleConfig, total: int) -> float:
    """Linear warmup, then multiply by ``gamma`` every ``decay_every`` steps from ``decay_start``."""
    decaying = cfg.decay_every > 0 and step >= cfg.decay_start
    n = (step - cfg.decay_start) // cfg.decay_every + 1 if decaying else 0
    return base * _warmup(step, cfg) * cfg.gamma**n


def lr_cosine(step: int, base: float, cfg: ScheduleConfig, total: int) -> float:
    """Linear warmup, then cosine from ``base`` to ``min_lr`` at the last step (``total`` - 1)."""
    if step < cfg.warmup_steps:
        return base * _warmup(step, cfg)
    t = min(1.0, (step - cfg.warmup_steps) / max(1, total - 1 - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (base - cfg.min_lr) * (1.0 + math.cos(math.pi * t))


# name -> Entry(config, ``(step, base_lr, cfg, total_steps) -> lr``); butd.registry style
SCHEDULES = Registry("LR schedule", {
    "constant": Entry(ScheduleConfig, lr_constant, "the base rate (after warmup)"),
    "warmup_step": Entry(ScheduleConfig, lr_warmup_step,
                         "linear warmup, then x gamma every decay_every steps from decay_start"),
    "cosine": Entry(ScheduleConfig, lr_cosine, "linear warmup, then cosine from the base rate to min_lr")})


def lr_at(step: int, base: float, cfg: ScheduleConfig, total: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total``."""
    if cfg.name not in SCHEDULES:
        raise ValueError(f"unknown LR schedule {cfg.name!r} (known: {', '.join(SCHEDULES)})")
    return SCHEDULES[cfg.name](step, base, cfg, total)


# --------------------------------------------------------------------------------------- loop pieces
@dataclass(frozen=True)
class LoopConfig:
    """Loop settings shared by every trainer."""

    epochs: int = 10
    batch_size: int = 512
    lr: float = 2e-3
    grad_clip: float = 0.25  # max global grad norm; 0 = off
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    seed: int = 0
    num_workers: int = 0
    log_every: int = 50
    checkpoint_every: int = 0  # extra mid-epoch checkpoints every N steps (0 = epoch ends only)
    max_steps: int = 0  # stop after this many optimiser steps (0 = no limit)
    monitor: str = "accuracy"  # metric from `evaluate` that picks best.pt and drives early stopping
    monitor_mode: str = "max"
    patience: int = 0  # early stopping after N epochs without improvement (0 = off)


@dataclass
class LoopState:
    """Where training is; stored in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped: str = ""


class NonFiniteLossError(RuntimeError):
    """Loss or gradient norm became NaN/inf; training stopped before the bad update."""

    def __init__(self, step: int, batch_ids: list[int], value: float) -> None:
        more = " ..." if len(batch_ids) > 20 else ""
        super().__init__(f"non-finite loss/grad ({value}) at step {step}; batch ids {batch_ids[:20]}{more}; "
                         "the last good checkpoint was kept")
        self.step, self.batch_ids, self.value = step, batch_ids, value


class EpochSampler(Sampler[int]):
    """Permutation that depends only on (seed, epoch); ``skip`` drops the first indices (mid-epoch resume)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        return iter(order[self.skip :].tolist())

    def __len__(self) -> int:
        return max(0, self.n - self.skip)


class Callback:
    """Hooks; ``on_epoch_end`` returning True stops training."""

    def on_step(self, state: LoopState, logs: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, state: LoopState, metrics: dict[str, float]) -> bool:
        return False


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs (for metrics other than
    ``LoopConfig.monitor``, which ``LoopConfig.patience`` already covers, resumably)."""

    def __init__(self, monitor: str, mode: str = "max", patience: int = 3) -> None:
        self.monitor, self.sign, self.patience = monitor, (1.0 if mode == "max" else -1.0), patience
        self.best: float | None = None
        self.bad = 0

    def on_epoch_end(self, state: LoopState, metrics: dict[str, float]) -> bool:
        if self.monitor not in metrics:
            return False
        value = self.sign * float(metrics[self.monitor])
        if self.best is None or value > self.best:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return self.bad >= self.patience


class MetricsLogger:
    """Appends JSON lines to ``out_dir/metrics.jsonl``, echoes to the console, mirrors to TensorBoard."""

    def __init__(self, out_dir: Path, echo: Callable[[str], None] | None = print) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.echo = echo
        self.tb = None
        try:  # optional dependency
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))
        except Exception:  # noqa: BLE001 - tensorboard missing or broken: log without it
            self.tb = None

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        record = {"kind": kind, "step": step, **values}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.echo is not None:
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in values.items())
            self.echo(f"[{kind} step {step}] {shown}")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def _batch_ids(batch: dict[str, Any], key: str) -> list[int]:
    ids = batch.get(key)
    return [int(i) for i in ids] if isinstance(ids, torch.Tensor) else list(ids or [])


# --------------------------------------------------------------------------------------- the loop
def fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, dataset: Dataset,
        loss_fn: Callable[[dict[str, torch.Tensor], dict[str, Any]], dict[str, torch.Tensor]],
        config: LoopConfig, out_dir: str | Path, *,
        evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        callbacks: Sequence[Callback] = (), meta: dict[str, Any] | None = None,
        resume: Checkpoint | None = None,
        collate_fn: Callable | None = None, id_key: str = "question_id", device: str | torch.device = "cpu",
        echo: Callable[[str], None] | None = print) -> LoopState:
    """Train ``model`` and return the final :class:`LoopState`.

    ``loss_fn(outputs, batch)`` returns a dict with a scalar "loss" (other entries are logged).
    ``evaluate(model)`` runs after each epoch; its ``config.monitor`` value picks ``best.pt``.
    Checkpoints (``out_dir/checkpoints/{last,best}.pt``) carry ``meta`` (config, vocab, manifest...).
    Raises :class:`NonFiniteLossError` on NaN/inf loss or gradients, leaving ``last.pt`` untouched.
    """
    out_dir, device = Path(out_dir), torch.device(device)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = LoopState()
    model.to(device)  # before loading optimiser state, which follows its parameters' device
    if resume is not None:
        model.load_state_dict(resume.model)
        if resume.optimizer is not None:
            optimizer.load_state_dict(resume.optimizer)
        state = LoopState(**resume.meta["loop"])
        if state.stopped == "max_steps":  # a step budget ends one invocation, not the run
            state.stopped = ""
        restore_rng(resume.rng)
    callbacks = list(callbacks)
    sampler = EpochSampler(len(dataset), config.seed)  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                        num_workers=config.num_workers, collate_fn=collate_fn,
                        generator=torch.Generator().manual_seed(config.seed))
    steps_per_epoch = math.ceil(len(dataset) / config.batch_size)  # type: ignore[arg-type]
    total = steps_per_epoch * config.epochs
    progress = Progress(echo)
    progress.banner(examples=len(dataset), batch_size=config.batch_size, steps_per_epoch=steps_per_epoch,  # type: ignore[arg-type]
                    epochs=config.epochs, device=device, parameters=sum(p.numel() for p in model.parameters()),
                    epoch=state.epoch, step=state.step, name=out_dir.name)
    logger = MetricsLogger(out_dir, progress.write if echo is not None else None)
    sign = 1.0 if config.monitor_mode == "max" else -1.0
    saved = (state.epoch, state.step, resume is not None)  # where last.pt is (the resume point)
    updating = False  # between optimizer.step() and the state update: the model is ahead of `state`

    def checkpoint(name: str) -> None:
        nonlocal saved
        save_checkpoint(ckpt_dir / name, model, optimizer, step=state.step, epoch=state.epoch,
                        meta={**(meta or {}), "loop": dataclasses.asdict(state)})
        if name == "last.pt":
            saved = (state.epoch, state.step, True)

    try:
        while state.epoch < config.epochs and not state.stopped:
            model.train()
            sampler.set_epoch(state.epoch, skip=state.batch_in_epoch * config.batch_size)
            t0, running, seen = time.perf_counter(), 0.0, 0
            progress.start_epoch(state.epoch, state.batch_in_epoch)
            for batch in loader:
                batch = _to_device(batch, device)
                lr = lr_at(state.step, config.lr, config.schedule, total)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                outputs = model(batch)
                losses = loss_fn(outputs if isinstance(outputs, dict) else {"logits": outputs}, batch)
                loss = losses["loss"]
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(state.step, _batch_ids(batch, id_key), float(loss.detach()))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
                if not math.isfinite(grad_norm):
                    raise NonFiniteLossError(state.step, _batch_ids(batch, id_key), grad_norm)
                updating = True
                optimizer.step()
                state.step += 1
                state.batch_in_epoch += 1
                updating = False
                running, seen = running + float(loss.detach()), seen + 1
                progress.step(float(loss.detach()))
                logs = {k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in losses.items()}
                logs |= {"lr": lr, "grad_norm": grad_norm}
                for cb in callbacks:
                    cb.on_step(state, logs)
                if config.log_every > 0 and state.step % config.log_every == 0:
                    logger.log("train", state.step, {"epoch": state.epoch, **logs})
                if config.max_steps and state.step >= config.max_steps:
                    state.stopped = "max_steps"
                    break
                if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                    checkpoint("last.pt")
            if state.stopped:
                checkpoint("last.pt")
                break
            progress.end_epoch(state.epoch, state.batch_in_epoch, running / max(1, seen))
            epoch_logs: dict[str, Any] = {"epoch": state.epoch, "train_loss": running / max(1, seen),
                                          "epoch_seconds": time.perf_counter() - t0}
            metrics = evaluate(model) if evaluate is not None else {}
            epoch_logs.update(metrics)
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            improved = config.monitor in metrics and (
                state.best is None or sign * float(metrics[config.monitor]) > sign * state.best
            )
            if improved:
                state.best, state.best_epoch = float(metrics[config.monitor]), state.epoch - 1
                state.bad_epochs = 0
            elif config.monitor in metrics:
                state.bad_epochs += 1
            stop = any([cb.on_epoch_end(state, metrics) for cb in callbacks])
            if stop or (config.patience > 0 and state.bad_epochs >= config.patience):
                state.stopped = "early_stopping"
            logger.log("epoch", state.step, epoch_logs)
            checkpoint("last.pt")
            if improved:
                checkpoint("best.pt")
    except NonFiniteLossError as err:
        logger.log("error", err.step, {"error": "non_finite", "value": err.value, "batch_ids": err.batch_ids})
        raise
    except KeyboardInterrupt:  # Ctrl-C: keep the work done so far (unless it came mid-update) for --resume
        progress.close()
        if not updating:
            checkpoint("last.pt")
        raise TrainingInterrupted(*saved) from None
    finally:
        progress.close()
        logger.close()
    return state
