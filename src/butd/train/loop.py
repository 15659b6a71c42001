"""One generic training loop (used by the VQA and captioning trainers).

``fit`` is a short epoch/step skeleton: a deterministic per-epoch shuffle, a pure-function LR schedule,
gradient clipping and a non-finite guard (:func:`_step`). Checkpoints that resume exactly (even mid-epoch),
metrics.jsonl logging and early stopping are callbacks (``butd.train.callbacks``), and so is anything a
trainer adds (scheduled sampling).
"""

from __future__ import annotations

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
from butd.train.callbacks import Callback, Checkpoints, EarlyStopping, MetricsLog
from butd.train.checkpoint import Checkpoint, restore_rng
from butd.train.progress import Progress, TrainingInterrupted
from butd.train.schedules import SCHEDULES, ScheduleConfig, lr_at

CLIP_MODES = ("norm", "value")

__all__ = ["CLIP_MODES", "Callback", "EarlyStopping", "LoopConfig", "LoopState", "NonFiniteLossError",
           "ScheduleConfig", "TrainingInterrupted", "check_loop", "effective_batch_size", "fit", "lr_at"]


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


def check_loop(config: LoopConfig, where: str, world_size: int = 1) -> None:
    """Every setting of one training phase, checked before any work starts (a phase that has epochs)."""
    if config.epochs < 0 or config.max_steps < 0:
        raise UserError("epochs and max_steps must not be negative", f"{where}.epochs", "pass 0 or more", usage=True)
    if config.epochs == 0:
        return
    if config.batch_size < 1 or config.batch_size % world_size:  # the LR is never rescaled: the batch must divide
        raise UserError(f"batch_size {config.batch_size} (the global batch) does not divide over {world_size} "
                        "processes", f"{where}.batch_size", f"choose a multiple of {world_size} or another number "
                        "of processes", usage=True)
    if config.clip_mode not in CLIP_MODES:
        raise UserError(f"unknown clip_mode {config.clip_mode!r}", f"{where}.clip_mode",
                        f"use one of {', '.join(CLIP_MODES)}", usage=True)
    if config.monitor_mode not in ("max", "min"):
        raise UserError(f"unknown monitor_mode {config.monitor_mode!r}", f"{where}.monitor_mode", "use max or min",
                        usage=True)
    if not config.lr > 0:
        raise UserError("the learning rate must be positive", f"{where}.lr = {config.lr}", "pass lr > 0", usage=True)
    SCHEDULES.entry(config.schedule.name)  # an unknown schedule stops with one line
    lr_at(0, config.lr, config.schedule, 1, 1)  # and so does an unknown unit


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
    check_loop(config, "loop", info.world_size)
    if info.is_main:
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    ddp.check_shared_dir(out_dir)
    model.to(device)  # before loading optimiser state, which follows its parameters' device
    state = _resume(model, optimizer, resume, config, info, echo) if resume is not None else LoopState()
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
    early = EarlyStopping(config.monitor, config.monitor_mode, config.patience)
    log = MetricsLog(out_dir, config.log_every, progress.write if echo is not None else None, info.is_main,
                     config.epochs)
    saver = Checkpoints(out_dir, model, optimizer, config.checkpoint_every, meta, early, state, resume is not None)
    hooks = [*callbacks, early, log, saver]
    net = ddp.wrap_model(model, info, device)
    mid_update = False  # between optimizer.step() and the state update: the model is ahead of `state`
    try:
        while state.epoch < config.epochs and not state.stopped:
            model.train()
            sampler.set_epoch(state.epoch, skip=state.batch_in_epoch * batch_size)
            t0 = time.perf_counter()
            for cb in hooks:
                cb.on_epoch_start(state)
            progress.start_epoch(state.epoch, state.batch_in_epoch)
            for batch in loader:
                lr = lr_at(state.step, config.lr, config.schedule, total, steps_per_epoch)
                logs = _step(net, model, optimizer, loss_fn, _to_device(batch, device), lr, config, info, state,
                             id_key)
                mid_update = True
                optimizer.step()
                state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + 1
                state.loss_sum, state.loss_steps = state.loss_sum + logs["loss"], state.loss_steps + 1
                mid_update = False
                progress.step(logs["loss"])
                if config.max_steps and state.step >= config.max_steps:
                    state.stopped = "max_steps"  # a step budget ends one invocation, not the run
                for cb in hooks:
                    cb.on_step(state, logs)
                if state.stopped:
                    break
            if state.stopped:
                for cb in hooks:
                    cb.on_stop(state)
                break
            loss = state.loss_sum / max(1, state.loss_steps)
            progress.end_epoch(state.epoch, state.batch_in_epoch, loss)
            log.epoch_logs = {"epoch": state.epoch, "batch_size": batch_size, "train_loss": loss,
                              "epoch_seconds": time.perf_counter() - t0}
            metrics = evaluate(model) if evaluate is not None else {}
            state.epoch, state.batch_in_epoch, state.loss_sum, state.loss_steps = state.epoch + 1, 0, 0.0, 0
            for cb in hooks:  # a True from any hook stops training; the checkpoint (last hook) records it
                if cb.on_epoch_end(state, metrics) and not state.stopped:
                    state.stopped = "early_stopping"
    except NonFiniteLossError as err:
        for cb in hooks:
            cb.on_error(state, "non_finite", {"value": err.value, "batch_ids": err.batch_ids})
        raise
    except KeyboardInterrupt:  # Ctrl-C: keep the work done so far (unless it came mid-update) for --resume
        progress.close()
        for cb in hooks:
            cb.on_interrupt(state, mid_update)
        raise TrainingInterrupted(*saver.saved) from None
    finally:
        progress.close()
        log.close()
    ddp.barrier()  # rank 0's checkpoints are on disk before any rank reads them
    return state


def _resume(model: torch.nn.Module, optimizer: torch.optim.Optimizer, resume: Checkpoint, config: LoopConfig,
            info: Any, echo: Callable[[str], None] | None) -> LoopState:
    """Model, optimiser, loop state and RNG of a checkpoint (a step budget that ended it is cleared)."""
    model.load_state_dict(resume.model)
    if resume.optimizer is not None:
        optimizer.load_state_dict(resume.optimizer)
    state = LoopState(**resume.meta["loop"])
    if state.stopped == "max_steps":
        state.stopped = ""
    restore_rng(resume.rng)
    note = ddp.restore_rank_rng(resume.meta.get("rank_rng"), info, config.seed, state.step)
    if note and echo is not None and info.is_main:
        echo(note)
    return state


def _step(net: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
          batch: dict[str, Any], lr: float, config: LoopConfig, info: Any, state: LoopState,
          id_key: str) -> dict[str, float]:
    """Forward, loss, backward and clipping of one batch (the caller takes the optimiser step); the logs."""
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
    return logs | {"lr": lr, "grad_norm": grad_norm}
