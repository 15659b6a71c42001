"""Learning-rate and scheduled-sampling schedules: pure functions of (step, run length).

Lengths (warmup, decay start, decay interval) are given in a ``unit``: ``"steps"`` (optimiser steps),
``"epochs"`` (scaled by the steps in one epoch) or ``"fraction"`` (of the whole run), so a schedule written
for VQA v2 (hundreds of steps per epoch) still makes sense on a 100-step run. Sources of each default are in
RECIPES.md.

* ``constant``: base lr (after an optional linear warmup);
* ``step``: self-critical.pytorch's decay, ``lr = base * gamma ** ((t - decay_start) // decay_every)`` from
  ``decay_start`` on (the first decay comes one interval after the start: 0.8 every 3 epochs);
* ``warmup_step``: linear warmup, then ``gamma`` at ``decay_start`` and every ``decay_every`` after it;
* ``cosine``: linear warmup, then cosine to ``min_lr`` at the last step;
* ``noam``: Vaswani et al.'s rate (self-critical's ``NoamOpt``), the base rate being its peak at ``warmup``.

Scheduled sampling (Bengio et al. 2015, as self-critical.pytorch runs it): the chance of feeding the model's
own sampled word instead of the ground truth rises by ``increase_prob`` every ``increase_every`` epochs after
``start`` epochs, up to ``max_prob``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from butd.errors import UserError
from butd.registry import Entry, Registry

__all__ = ["SCHEDULES", "UNITS", "ScheduleConfig", "ScheduledSamplingConfig", "lr_at", "lr_noam",
           "scheduled_sampling_prob", "to_steps"]

UNITS = ("steps", "epochs", "fraction")


@dataclass(frozen=True)
class ScheduleConfig:
    """LR schedule: ``name`` in SCHEDULES; ``warmup``, ``decay_start`` and ``decay_every`` in ``unit``."""

    name: str = "constant"
    unit: str = "epochs"  # steps | epochs | fraction (of the whole run)
    warmup: float = 0.0  # length of the linear warmup
    decay_start: float = 0.0  # step / warmup_step: where decay begins
    decay_every: float = 0.0  # step / warmup_step: interval between decays (0 = never)
    gamma: float = 0.25  # multiplier per decay
    min_lr: float = 0.0  # cosine floor


@dataclass(frozen=True)
class ScheduledSamplingConfig:
    """Scheduled sampling in epochs; ``start`` < 0 turns it off (self-critical's defaults otherwise)."""

    start: int = -1  # first epoch after which the probability rises (-1 = off)
    increase_every: int = 5
    increase_prob: float = 0.05
    max_prob: float = 0.25


def to_steps(value: float, unit: str, steps_per_epoch: int, total: int) -> float:
    """A schedule length in optimiser steps."""
    if unit == "steps":
        return float(value)
    if unit == "epochs":
        return float(value) * steps_per_epoch
    if unit == "fraction":
        return float(value) * total
    raise UserError(f"unknown schedule unit {unit!r}", "loop.schedule.unit", f"use one of {', '.join(UNITS)}",
                    usage=True)


def _warmup(step: int, warmup: float) -> float:
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def lr_constant(step: int, base: float, cfg: ScheduleConfig, spe: int, total: int) -> float:
    return base * _warmup(step, to_steps(cfg.warmup, cfg.unit, spe, total))


def lr_step(step: int, base: float, cfg: ScheduleConfig, spe: int, total: int) -> float:
    """self-critical.pytorch: gamma ** floor((t - start) / every) once t >= start (t in ``unit``)."""
    start = to_steps(cfg.decay_start, cfg.unit, spe, total)
    every = to_steps(cfg.decay_every, cfg.unit, spe, total)
    n = math.floor((step - start) / every) if every > 0 and step >= start else 0
    return base * _warmup(step, to_steps(cfg.warmup, cfg.unit, spe, total)) * cfg.gamma**n


def lr_warmup_step(step: int, base: float, cfg: ScheduleConfig, spe: int, total: int) -> float:
    """Linear warmup, then multiply by ``gamma`` at ``decay_start`` and every ``decay_every`` after it."""
    start = to_steps(cfg.decay_start, cfg.unit, spe, total)
    every = to_steps(cfg.decay_every, cfg.unit, spe, total)
    n = math.floor((step - start) / every) + 1 if every > 0 and step >= start else 0
    return base * _warmup(step, to_steps(cfg.warmup, cfg.unit, spe, total)) * cfg.gamma**n


def lr_cosine(step: int, base: float, cfg: ScheduleConfig, spe: int, total: int) -> float:
    """Linear warmup, then cosine from ``base`` to ``min_lr`` at the last step (``total`` - 1)."""
    warm = to_steps(cfg.warmup, cfg.unit, spe, total)
    if step < warm:
        return base * _warmup(step, warm)
    t = min(1.0, (step - warm) / max(1.0, total - 1 - warm))
    return cfg.min_lr + 0.5 * (base - cfg.min_lr) * (1.0 + math.cos(math.pi * t))


def lr_noam(step: int, base: float, cfg: ScheduleConfig, spe: int, total: int) -> float:
    """Vaswani et al. 2017 (5.3), self-critical.pytorch ``NoamOpt.rate``: factor * d_model^-0.5 *
    min(t^-0.5, t * warmup^-1.5) at t = step + 1, written as ``base * min(sqrt(warmup / t), t / warmup)`` so that
    ``base`` = factor * (d_model * warmup)^-0.5 is the rate at the end of the warmup."""
    warm = to_steps(cfg.warmup, cfg.unit, spe, total)
    if warm <= 0:
        raise UserError("the noam schedule needs a warmup", "loop.schedule.warmup",
                        "set warmup > 0 (self-critical's transformer: 20000 steps)", usage=True)
    t = step + 1
    return base * min(math.sqrt(warm / t), t / warm)


# name -> Entry(config, ``(step, base_lr, cfg, steps_per_epoch, total_steps) -> lr``); butd.registry style
SCHEDULES = Registry("LR schedule", {
    "constant": Entry(ScheduleConfig, lr_constant, "the base rate (after an optional warmup)"),
    "step": Entry(ScheduleConfig, lr_step,
                  "x gamma every decay_every from decay_start, first decay one interval in (self-critical)"),
    "warmup_step": Entry(ScheduleConfig, lr_warmup_step,
                         "linear warmup, then x gamma at decay_start and every decay_every after it"),
    "cosine": Entry(ScheduleConfig, lr_cosine, "linear warmup, then cosine from the base rate to min_lr"),
    "noam": Entry(ScheduleConfig, lr_noam,
                  "Noam (Vaswani et al.): linear warmup to the base rate, then x sqrt(warmup / t)")})


def lr_at(step: int, base: float, cfg: ScheduleConfig, total: int, steps_per_epoch: int | None = None) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total`` (``steps_per_epoch`` defaults to
    ``total``, i.e. a one-epoch run)."""
    if cfg.name not in SCHEDULES:
        raise ValueError(f"unknown LR schedule {cfg.name!r} (known: {', '.join(SCHEDULES)})")
    if cfg.unit not in UNITS:
        to_steps(0.0, cfg.unit, 1, 1)  # raises the one-line error
    spe = max(1, steps_per_epoch if steps_per_epoch is not None else total)
    return SCHEDULES[cfg.name](step, base, cfg, spe, max(1, total))


def scheduled_sampling_prob(epoch: int, cfg: ScheduledSamplingConfig) -> float:
    """Chance of feeding a sampled word during teacher forcing in ``epoch`` (0-based)."""
    if cfg.start < 0 or epoch <= cfg.start or cfg.increase_every <= 0:
        return 0.0
    return min(cfg.increase_prob * ((epoch - cfg.start) // cfg.increase_every), cfg.max_prob)
