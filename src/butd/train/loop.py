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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from butd.errors import UserError
from butd.train import distributed as ddp
from butd.train.checkpoint import Checkpoint, restore_rng, save_checkpoint
from butd.train.progress import Progress, TrainingInterrupted
from butd.train.schedules import SCHEDULES, ScheduleConfig, lr_at

CLIP_MODES = ("norm", "value")

__all__ = ["CLIP_MODES", "SCHEDULES", "Callback", "EarlyStopping", "LoopConfig", "LoopState",
           "MetricsLogger", "NonFiniteLossError", "ScheduleConfig", "TrainingInterrupted", "effective_batch_size",
           "fit", "lr_at"]


# --------------------------------------------------------------------------------------- loop pieces
@dataclass(frozen=True)
class LoopConfig:
    """Loop settings shared by every trainer."""

    epochs: int = 10
    batch_size: int = 512
    # shrink the batch (never grow it) so that an epoch has at least this many steps (0 = off): the reference
    # batch on a large set, enough updates on a small one (see effective_batch_size)
    min_steps_per_epoch: int = 0
    lr: float = 2e-3
    grad_clip: float = 0.25  # max global grad norm (clip_mode "norm") or max |g| ("value"); 0 = off
    clip_mode: str = "norm"  # norm (torch clip_grad_norm_) | value (clip_grad_value_, elementwise)
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
    loss_sum: float = 0.0  # this epoch's logged losses so far (a resumed epoch reports the whole epoch's mean)
    loss_steps: int = 0


class NonFiniteLossError(RuntimeError):
    """Loss or gradient norm became NaN/inf; training stopped before the bad update."""

    def __init__(self, step: int, batch_ids: list[int], value: float) -> None:
        more = " ..." if len(batch_ids) > 20 else ""
        super().__init__(f"non-finite loss/grad ({value}) at step {step}; batch ids {batch_ids[:20]}{more}; "
                         "the last good checkpoint was kept")
        self.step, self.batch_ids, self.value = step, batch_ids, value


class Callback:
    """Hooks; ``on_epoch_end`` returning True stops training."""

    def on_epoch_start(self, state: LoopState) -> None:
        pass

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

    def __init__(self, out_dir: Path, echo: Callable[[str], None] | None = print, enabled: bool = True) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.echo, self.enabled = echo, enabled  # disabled on every rank but 0
        self.tb = None
        if not enabled:
            return
        try:  # optional dependency
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))
        except Exception:  # noqa: BLE001 - tensorboard missing or broken: log without it
            self.tb = None

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
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


def effective_batch_size(n: int, config: LoopConfig, world_size: int = 1) -> int:
    """The global batch: ``config.batch_size``, or less when ``n`` examples would give fewer than
    ``min_steps_per_epoch`` steps; a reduced batch is rounded down to a multiple of ``world_size``."""
    if config.min_steps_per_epoch <= 0 or n <= 0 or n // config.min_steps_per_epoch >= config.batch_size:
        return config.batch_size
    small = max(1, n // config.min_steps_per_epoch)
    return max(world_size, small - small % world_size)


def _clip(model: torch.nn.Module, config: LoopConfig) -> float:
    """Clip gradients as configured; returns the global gradient L2 norm before clipping (NaN/inf when a
    gradient is not finite, in which case nothing is clipped: the caller stops before the update).

    One read pass computes the norm (it is logged and guards finiteness); the gradients are then rewritten only
    where clipping changes them: ``clip_grad_norm_``'s scaling (same formula) only when its factor is below 1,
    ``clip_grad_value_`` in value mode. ``clip_grad_norm_(params, inf)`` used to rewrite every gradient x1.
    """
    if config.clip_mode not in CLIP_MODES:
        raise UserError(f"unknown clip_mode {config.clip_mode!r}", "loop.clip_mode",
                        f"use one of {', '.join(CLIP_MODES)}", usage=True)
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    norm = float(total)
    if not math.isfinite(norm) or config.grad_clip <= 0:
        return norm
    if config.clip_mode == "norm":
        if float(config.grad_clip / (total + 1e-6)) < 1.0:  # clip_grad_norm_'s factor; x1 otherwise
            torch.nn.utils.clip_grads_with_norm_(params, config.grad_clip, total)
    else:
        torch.nn.utils.clip_grad_value_(params, config.grad_clip)
    return norm


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

    Under torchrun (see :mod:`butd.train.distributed`) every rank calls ``fit`` alike: ``config.batch_size``
    is the global batch, the model is wrapped in DDP, logged values are averaged over ranks, and rank 0 alone
    writes. A ``loss_weight`` entry (e.g. the token count of a token-mean loss) weighs each rank's loss by
    its share of the global total, so the gradient equals the single-process one.
    """
    out_dir, device, info = Path(out_dir), torch.device(device), ddp.current()
    ckpt_dir = out_dir / "checkpoints"
    if info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    ddp.check_shared_dir(out_dir)
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
        note = ddp.restore_rank_rng(resume.meta.get("rank_rng"), info, config.seed, state.step)
        if note and echo is not None and info.is_main:
            echo(note)
    callbacks = list(callbacks)
    sampler = ddp.ShardedEpochSampler(len(dataset), config.seed, info.rank, info.world_size)  # type: ignore
    batch_size = effective_batch_size(len(dataset), config, info.world_size)  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=ddp.per_rank_batch(batch_size, info.world_size),
                        sampler=sampler, num_workers=config.num_workers, collate_fn=collate_fn,
                        generator=torch.Generator().manual_seed(config.seed))
    steps_per_epoch = math.ceil(sampler.total / batch_size)
    total = steps_per_epoch * config.epochs
    progress = Progress(echo if info.is_main else None)
    progress.banner(examples=len(dataset), batch_size=batch_size, steps_per_epoch=steps_per_epoch,  # type: ignore
                    epochs=config.epochs, device=device, parameters=sum(p.numel() for p in model.parameters()),
                    epoch=state.epoch, step=state.step, name=out_dir.name)
    logger = MetricsLogger(out_dir, progress.write if echo is not None else None, enabled=info.is_main)
    sign = 1.0 if config.monitor_mode == "max" else -1.0
    net = ddp.wrap_model(model, info, device)
    saved = (state.epoch, state.step, resume is not None)  # where last.pt is (the resume point)
    updating = False  # between optimizer.step() and the state update: the model is ahead of `state`

    def checkpoint(name: str) -> None:
        nonlocal saved
        rank_rng = ddp.rank_rng_states()  # collective: every rank takes part, rank 0 writes
        if info.is_main:
            save_checkpoint(ckpt_dir / name, model, optimizer, step=state.step, epoch=state.epoch,
                            meta={**(meta or {}), "loop": dataclasses.asdict(state), "rank_rng": rank_rng,
                                  "world_size": info.world_size})
        if name == "last.pt":
            saved = (state.epoch, state.step, True)

    try:
        while state.epoch < config.epochs and not state.stopped:
            model.train()
            sampler.set_epoch(state.epoch, skip=state.batch_in_epoch * batch_size)
            t0 = time.perf_counter()
            for cb in callbacks:
                cb.on_epoch_start(state)
            progress.start_epoch(state.epoch, state.batch_in_epoch)
            for batch in loader:
                batch = _to_device(batch, device)
                lr = lr_at(state.step, config.lr, config.schedule, total, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                outputs = net(batch)
                losses = loss_fn(outputs if isinstance(outputs, dict) else {"logits": outputs}, batch)
                loss, weight = losses["loss"], float(losses.pop("loss_weight", 1.0))
                logs, scale = ddp.reduce_step(losses, weight, info)
                if not math.isfinite(logs["loss"]):  # every rank sees the global value and stops together
                    raise NonFiniteLossError(state.step, _batch_ids(batch, id_key), logs["loss"])
                optimizer.zero_grad(set_to_none=True)
                (loss * scale if scale != 1.0 else loss).backward()
                grad_norm = _clip(model, config)
                if not math.isfinite(grad_norm):
                    raise NonFiniteLossError(state.step, _batch_ids(batch, id_key), grad_norm)
                updating = True
                optimizer.step()
                state.step += 1
                state.batch_in_epoch += 1
                updating = False
                state.loss_sum, state.loss_steps = state.loss_sum + logs["loss"], state.loss_steps + 1
                progress.step(logs["loss"])
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
            progress.end_epoch(state.epoch, state.batch_in_epoch, state.loss_sum / max(1, state.loss_steps))
            epoch_logs: dict[str, Any] = {"epoch": state.epoch, "batch_size": batch_size,
                                          "train_loss": state.loss_sum / max(1, state.loss_steps),
                                          "epoch_seconds": time.perf_counter() - t0}
            metrics = evaluate(model) if evaluate is not None else {}
            epoch_logs.update(metrics)
            state.epoch, state.batch_in_epoch, state.loss_sum, state.loss_steps = state.epoch + 1, 0, 0.0, 0
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
        if not updating and info.world_size == 1:  # under DDP saving is collective: keep the last saved
            checkpoint("last.pt")
        raise TrainingInterrupted(*saved) from None
    finally:
        progress.close()
        logger.close()
    ddp.barrier()  # rank 0's checkpoints are on disk before any rank reads them
    return state
