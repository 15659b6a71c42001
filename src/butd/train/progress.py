"""What training tells its user: a banner before the first step, a per-epoch progress bar (tqdm) with
loss, steps/s and ETA on a terminal, plain lines otherwise, and where a stopped run resumes.

The bar goes to stderr only when stderr is a terminal; a log file or a pipe gets one plain line per
epoch instead (the metrics themselves always go to ``metrics.jsonl``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Progress", "TrainingInterrupted", "terminal_bar", "where"]


def terminal_bar(iterable: Any, desc: str, unit: str = "batch", total: int | None = None,
                 stream: TextIO | None = None) -> Any:
    """``iterable`` under a tqdm bar on ``stream`` (stderr) when it is a terminal: evaluation, reports.
    Elsewhere (logs, pipes, tests) the iterable itself is returned."""
    stream = stream if stream is not None else sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=unit, total=total, leave=False, file=stream, dynamic_ncols=True)


def where(epoch: int, step: int) -> str:
    """A loop position in words, as the banner, the resume line and the Ctrl-C line say it."""
    return f"epoch {epoch + 1} step {step}"


class TrainingInterrupted(Exception):
    """Ctrl-C during ``fit``: the run's ``last.pt`` holds epoch ``epoch``, step ``step`` (resume point)."""

    def __init__(self, epoch: int, step: int, saved: bool) -> None:
        self.epoch, self.step, self.saved = epoch, step, saved
        super().__init__(f"stopped at {where(epoch, step)}; rerun with --resume")


class Progress:
    """Banner, bar and per-epoch lines of one ``fit`` call; every method is a no-op when ``echo`` is None."""

    def __init__(self, echo: Callable[[str], None] | None, stream: TextIO | None = None) -> None:
        self.echo, self.stream = echo, stream if stream is not None else sys.stderr
        self.tty = echo is not None and bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar: Any = None
        self.epochs = self.steps_per_epoch = 0
        self.t0, self.first_step = 0.0, 0

    def banner(self, *, examples: int, batch_size: int, steps_per_epoch: int, epochs: int, device: Any,
               parameters: int, epoch: int, step: int, name: str = "train") -> None:
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        if self.echo is None:
            return
        start = f"resuming at {where(epoch, step)}" if step or epoch else "from scratch"
        self.echo(f"{name}: {examples:,} examples, batch {batch_size}, {steps_per_epoch:,} steps/epoch x {epochs} "
                  f"epochs, device {device}, {parameters:,} parameters, {start}")

    def start_epoch(self, epoch: int, done_in_epoch: int) -> None:
        self.t0, self.first_step = time.perf_counter(), done_in_epoch
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps_per_epoch, initial=done_in_epoch, unit="step", leave=True,
                            desc=f"epoch {epoch + 1}/{self.epochs}", file=self.stream, dynamic_ncols=True)

    def step(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def end_epoch(self, epoch: int, done_in_epoch: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.echo is None or self.tty:
            return
        seconds = time.perf_counter() - self.t0
        rate = (done_in_epoch - self.first_step) / max(seconds, 1e-9)
        left = (self.epochs - epoch - 1) * self.steps_per_epoch / max(rate, 1e-9)
        self.echo(f"epoch {epoch + 1}/{self.epochs}: loss {loss:.4g}, {rate:.1f} steps/s, {seconds:.1f} s, "
                  f"ETA {left:.0f} s")

    def write(self, line: str) -> None:
        """Log lines: above the bar while one is drawn, else through ``echo``."""
        if self.echo is None:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            self.echo(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
