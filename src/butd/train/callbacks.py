"""The hooks of ``butd.train.loop.fit``: checkpoints (and resume points), metrics logging, early stopping.

``fit`` is a short epoch/step skeleton; everything else it does is one of these callbacks, in this order:
the caller's own callbacks (scheduled sampling, ...), :class:`EarlyStopping`, :class:`MetricsLog`, and
:class:`Checkpoints` last, so a checkpoint records the state after every other callback ran.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from butd.train import distributed as ddp
from butd.train.checkpoint import save_checkpoint

__all__ = ["Callback", "Checkpoints", "EarlyStopping", "MetricsLog"]


class Callback:
    """Hooks of ``fit``; ``on_epoch_end`` returning True stops training (``state.stopped``)."""

    def on_epoch_start(self, state: Any) -> None:
        pass

    def on_step(self, state: Any, logs: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, state: Any, metrics: dict[str, float]) -> bool:
        return False

    def on_stop(self, state: Any) -> None:
        """Training ends before its last epoch (a step budget, early stopping): also ends the epoch."""

    def on_interrupt(self, state: Any, mid_update: bool) -> None:
        """Ctrl-C; ``mid_update``: it came between the optimiser step and the state update."""

    def on_error(self, state: Any, kind: str, values: dict[str, Any]) -> None:
        """Training stops on an error (``kind``: "non_finite"), before any bad update."""

    def close(self) -> None:
        pass


class EarlyStopping(Callback):
    """Tracks ``monitor`` (best value, best epoch, epochs without improvement: in the LoopState, so a resumed
    run continues the count) and stops after ``patience`` epochs without improvement (0 = never)."""

    def __init__(self, monitor: str, mode: str = "max", patience: int = 0) -> None:
        self.monitor, self.sign, self.patience = monitor, (1.0 if mode == "max" else -1.0), patience
        self.improved = False

    def on_epoch_end(self, state: Any, metrics: dict[str, float]) -> bool:
        self.improved = False
        if self.monitor not in metrics:
            return False
        value = float(metrics[self.monitor])
        if state.best is None or self.sign * value > self.sign * state.best:
            state.best, state.best_epoch, state.bad_epochs = value, state.epoch - 1, 0
            self.improved = True
        else:
            state.bad_epochs += 1
        return self.patience > 0 and state.bad_epochs >= self.patience


class MetricsLog(Callback):
    """``metrics.jsonl`` (every ``log_every`` steps and every epoch; TensorBoard too when installed) and, on the
    console, one line of validation metrics per epoch (``validation after epoch 3/30: CIDEr-D 0.8123 (best)``).
    Step values go to the file only: the console has the progress bar (or its one line per epoch)."""

    def __init__(self, out_dir: Path, log_every: int, echo: Callable[[str], None] | None, enabled: bool,
                 epochs: int = 0) -> None:
        self.path, self.log_every, self.epochs = out_dir / "metrics.jsonl", log_every, epochs
        self.echo, self.enabled = echo, enabled  # disabled on every rank but 0
        self.tb = None
        self.epoch_logs: dict[str, Any] = {}  # filled by fit before on_epoch_end
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
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def on_step(self, state: Any, logs: dict[str, float]) -> None:
        if self.log_every > 0 and state.step % self.log_every == 0:
            self.log("train", state.step, {"epoch": state.epoch, **logs})

    def on_epoch_end(self, state: Any, metrics: dict[str, float]) -> bool:
        self.log("epoch", state.step, {**self.epoch_logs, **metrics})
        if self.enabled and self.echo is not None and metrics:
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            best = " (best)" if state.best_epoch == state.epoch - 1 else ""
            self.echo(f"validation after epoch {state.epoch}/{self.epochs}: {shown}{best}")
        return False

    def on_error(self, state: Any, kind: str, values: dict[str, Any]) -> None:
        self.log("error", state.step, {"error": kind, **values})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Checkpoints(Callback):
    """``checkpoints/last.pt`` at every epoch end, every ``every`` steps, when training stops early and on
    Ctrl-C (not mid-update, and only at world size 1: under DDP saving is collective); ``best.pt`` when
    ``early`` saw an improvement. ``saved`` is where last.pt is (the resume point)."""

    def __init__(self, out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, every: int,
                 meta: dict[str, Any] | None, early: EarlyStopping, state: Any, resumed: bool) -> None:
        self.dir, self.model, self.optimizer, self.every = out_dir / "checkpoints", model, optimizer, every
        self.meta, self.early, self.info = meta or {}, early, ddp.current()
        self.saved = (state.epoch, state.step, resumed)

    def save(self, state: Any, name: str) -> None:
        rank_rng = ddp.rank_rng_states()  # collective: every rank takes part, rank 0 writes
        if self.info.is_main:
            save_checkpoint(self.dir / name, self.model, self.optimizer, step=state.step, epoch=state.epoch,
                            meta={**self.meta, "loop": dataclasses.asdict(state), "rank_rng": rank_rng,
                                  "world_size": self.info.world_size})
        if name == "last.pt":
            self.saved = (state.epoch, state.step, True)

    def on_step(self, state: Any, logs: dict[str, float]) -> None:
        if self.every and state.step % self.every == 0 and not state.stopped:
            self.save(state, "last.pt")

    def on_stop(self, state: Any) -> None:
        self.save(state, "last.pt")

    def on_epoch_end(self, state: Any, metrics: dict[str, float]) -> bool:
        if self.early.improved:  # best first: if a save fails (a full disk), last.pt still points before it,
            self.save(state, "best.pt")  # so the resumed epoch writes both again, as an uninterrupted run does
        self.save(state, "last.pt")
        return False

    def on_interrupt(self, state: Any, mid_update: bool) -> None:
        if not mid_update and self.info.world_size == 1:
            self.save(state, "last.pt")
