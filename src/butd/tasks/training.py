"""``butd train`` as one library call: every rule of starting a run, then the task's trainer.

:func:`run_training` checks the options against the task's table, merges and checks every setting of every
phase against the number of processes (before anything is written), guards ``--out`` (``--resume`` /
``--overwrite``), takes the run's lock (one trainer per run), starts ``nproc`` DDP workers or trains here,
and removes a run folder it created when the start is refused by the data. A Python caller gets the same
rules as the command line.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from butd.errors import UserError

__all__ = ["run_training", "worker_argv"]


def _in_worker() -> tuple[bool, bool]:
    """(this is a DDP rank, the launching command already guarded --out and holds the lock)."""
    from butd.train.launch import LAUNCHED_ENV

    worker = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    # `--nproc` checked OUT before starting the ranks; under torchrun started by hand, rank 0 checks it
    checked = worker and (os.environ.get(LAUNCHED_ENV) == "1" or os.environ.get("RANK", "0") != "0")
    return worker, checked


def worker_argv(model: str, options: dict[str, Any], out: str | Path, config: str | Path | None,
                resume: bool, verbose: bool = False) -> list[str]:
    """The `butd train` command line each DDP worker runs (options are named as on the command line)."""
    argv = ["train", "--model", model, "--out", str(out), *(["--config", str(config)] if config else []),
            *(["--resume"] if resume else []), *(["--verbose"] if verbose else [])]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False or value == () or value == []:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            argv += [a for v in value for a in (flag, str(v))]
        else:
            argv += [flag, str(value)]
    return argv


def run_training(model: str, options: dict[str, Any], out: str | Path, *, config: str | Path | None = None,
                 resume: bool = False, overwrite: bool = False, nproc: int = 1, verbose: bool = False,
                 echo: Callable[[str], None] | None = print,
                 warn: Callable[[str], None] | None = None) -> dict[str, Any] | int:
    """Train ``model`` (its task from the model registry) into ``out``; returns the trainer's summary, or the
    exit status of the ``nproc`` workers. ``options``: the task's data paths and overrides (``features``,
    ``captions`` or ``questions``/``annotations``/..., ``epochs``, ``device``, ``skip_missing``...)."""
    from butd.models.registry import task_of
    from butd.shards.lock import folder_lock
    from butd.tasks import task_module
    from butd.tasks.common import check_options
    from butd.tasks.guard import check_out, clear_run, random_weights_warning, resume_point

    warn = warn or echo
    task, out = task_of(model), Path(out)
    mod = task_module(task)
    check_options(task, "train", options, model)
    if nproc < 1:
        raise UserError("--nproc must be at least 1", nproc, "pass a number of processes", usage=True)
    worker, checked = _in_worker()
    world = nproc if nproc > 1 else int(os.environ.get("WORLD_SIZE", "1") or 1)
    mod.check_config(mod.train_config(model, options, config), world)  # every phase, before anything is written
    if checked:  # a rank of `--nproc` (or rank > 0 of torchrun): the launching process guards and locks
        return mod.train(model, options, out, config=config, resume=resume, echo=echo)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other", out, "pass one of them", usage=True)
    if out.exists() and not out.is_dir():
        raise UserError("--out is a file", out, "pass a directory", usage=True)
    created = not out.exists()
    try:
        with folder_lock(out, "run"):  # first: while another trainer writes the run, nothing else is known
            if check_out(out, resume=resume, overwrite=overwrite):
                clear_run(out)
                created = True
            if resume and warn is not None:
                warn(resume_point(out, model, options["features"]))
            warning = random_weights_warning(options["features"])
            if warning and warn is not None:
                warn(warning)
            if nproc > 1:
                from butd.train.launch import launch_local

                return launch_local(nproc, worker_argv(model, options, out, config, resume, verbose))
            return mod.train(model, options, out, config=config, resume=resume, echo=echo)
    except BaseException as exc:
        if created and not _has_work(out):
            shutil.rmtree(out, ignore_errors=True)  # a start refused by the data leaves no directory behind
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) and _has_work(out):
            raise UserError("no space left on the device", exc.filename or out,
                            "free space, then rerun the same command with --resume") from None
        raise


def _has_work(out: Path) -> bool:
    """Whether ``out`` holds a checkpoint to resume from (then it is kept, and ``--resume`` continues it)."""
    from butd.tasks.guard import last_checkpoint

    return last_checkpoint(out) is not None
