"""Protect runs before training starts: an existing --out needs --resume or --overwrite, a resume must
use a store like the one the run was trained on, and a store of random weights is said out loud.

Everything here runs before anything is written, so a refused start leaves the directory as it was.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from butd.errors import UserError

__all__ = ["RUN_MARKERS", "check_out", "clear_run", "last_checkpoint", "random_weights_warning", "resume_point"]

RUN_MARKERS = ("run.json", "config.yaml", "checkpoints", "xe", "scst")  # what a (possibly unfinished) run holds
_LAST = ("scst/checkpoints/last.pt", "xe/checkpoints/last.pt", "checkpoints/last.pt")  # newest phase first


def last_checkpoint(out: Path) -> Path | None:
    """The newest phase's checkpoints/last.pt of a run folder, or None."""
    return next((out / p for p in _LAST if (out / p).is_file()), None)


def check_out(out: str | Path, *, resume: bool, overwrite: bool) -> bool:
    """A non-empty ``out`` needs ``resume`` (and a checkpoint to resume) or ``overwrite`` (of a butd run).
    Returns whether ``out`` holds a run that ``overwrite`` is to replace (:func:`clear_run`)."""
    from butd.shards.lock import LOCK_NAME

    out = Path(out)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other", out, "pass one of them", usage=True)
    if out.exists() and not out.is_dir():
        raise UserError("--out is a file", out, "pass a directory", usage=True)
    busy = out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir())
    if resume:
        if last_checkpoint(out) is None:
            raise UserError("nothing to resume: no checkpoints/last.pt", out, "drop --resume to start a new run",
                            usage=True)
        return False
    if not busy:
        return False
    if not overwrite:
        raise UserError("--out already holds files", out,
                        "pass --resume to continue that run, --overwrite to replace it, or a new --out", usage=True)
    if not any((out / m).exists() for m in RUN_MARKERS):
        raise UserError("--overwrite replaces butd runs only, and this is not one", out, "choose a new --out",
                        usage=True)
    return True


def clear_run(out: str | Path) -> None:
    """Remove a run's files for ``--overwrite`` (the caller holds the run's lock, which stays)."""
    from butd.shards.lock import LOCK_NAME

    for p in Path(out).iterdir():
        if p.name != LOCK_NAME:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def resume_point(out: str | Path, model: str, features: str | Path) -> str:
    """Where ``--resume`` continues, after checking the run's model and store against this invocation's.

    The checkpoint records the store's kind, feature width and extractor; a different one is refused
    (else the run would continue on other features, or stop with a size mismatch deep in torch).
    """
    from butd.shards import FeatureStore
    from butd.train.checkpoint import load_checkpoint
    from butd.train.progress import where

    path = last_checkpoint(Path(out))
    if path is None:
        raise UserError("nothing to resume: no checkpoints/last.pt", out, "drop --resume to start a new run",
                        usage=True)
    meta = load_checkpoint(path).meta
    if meta.get("model") not in (None, model):
        raise UserError(f"the run trains model {meta['model']!r}, not {model!r}", out,
                        f"pass --model {meta['model']} to resume it", usage=True)
    have: dict[str, Any] = meta.get("store") or {}
    store = FeatureStore(features)
    now = {"kind": store.kind, "feature_dim": store.feature_dim,
           "extractor": (store.manifest.get("extractor") or {}).get("name")}
    was = {"kind": have.get("kind"), "feature_dim": have.get("feature_dim"),
           "extractor": (have.get("extractor") or {}).get("name")}
    diff = [f"{k} {was[k]} -> {now[k]}" for k in now if was[k] != now[k]]
    if diff:
        raise UserError(f"the run was trained on another store ({', '.join(diff)})", features,
                        "resume with the run's store, or start a new run in a new --out", usage=True)
    loop = meta.get("loop") or {}
    phase = path.parent.parent.name if path.parent.parent != Path(out) else ""
    return f"resuming {out} at {where(int(loop.get('epoch', 0)), int(loop.get('step', 0)))}" + (
        f" ({phase} phase)" if phase else "")


def random_weights_warning(features: str | Path) -> str | None:
    """One warning line when the store's extractor ran with random weights (its features are meaningless)."""
    from butd.shards import read_manifest
    from butd.shards.manifest import extractor_weights

    ext = read_manifest(features).get("extractor") or {}
    if extractor_weights(ext) != "random":
        return None
    return (f"warning: {features} was extracted by {ext.get('name')} with random weights: "
            "the features are meaningless (fine for tests, not for results)")
