"""Checkpoints that resume exactly: tensors in a torch file, everything else as one JSON string inside it.

A checkpoint holds the model and optimiser state dicts, the torch (and CUDA) RNG states as tensors, and a
JSON "meta" string with the step / epoch / loop state, the numpy and python RNG states, the run config,
the vocabulary / answers and the feature store manifest. Loading uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Checkpoint", "capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint"]

FORMAT = "butd-checkpoint/1"


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    step: int
    epoch: int
    meta: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> dict[str, Any]:
    """RNG states of torch (tensor), CUDA (tensors, if any), numpy and python (JSON-able)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    step: int,
    epoch: int,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write atomically (temp file + rename). ``meta`` must be JSON-serialisable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = capture_rng()
    meta_all = {
        "format": FORMAT,
        "step": int(step),
        "epoch": int(epoch),
        "meta": meta or {},
        "rng": {"numpy": rng["numpy"], "python": rng["python"]},
    }
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "rng_torch": rng["torch"],
        "rng_cuda": list(rng["cuda"]),
        "meta_json": json.dumps(meta_all),
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as "unexpected pos ..."
        raise _write_error(exc, path) from None
    finally:
        tmp.unlink(missing_ok=True)  # a failed save leaves the previous checkpoint and no temp file
    return path


def _write_error(exc: Exception, path: Path) -> OSError:
    """A failed save as the OSError it is (a full disk says ENOSPC, "free space and rerun with --resume")."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return OSError(exc.errno, exc.strerror, str(path))
    if not path.parent.exists():
        return OSError(errno.ENOENT, "the folder vanished while butd wrote into it", str(path.parent))
    free = shutil.disk_usage(path.parent).free
    if free < (64 << 20):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, f"cannot write the checkpoint ({str(exc).splitlines()[0][:200]})", str(path))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (safe loading, no pickle of objects)."""
    payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    meta_all = json.loads(payload["meta_json"])
    if meta_all.get("format") != FORMAT:
        raise ValueError(f"{path}: not a butd checkpoint (format {meta_all.get('format')!r})")
    rng = {
        "torch": payload["rng_torch"].cpu(),
        "cuda": [t.cpu() for t in payload["rng_cuda"]],
        **meta_all["rng"],
    }
    return Checkpoint(
        model=payload["model"],
        optimizer=payload["optimizer"] or None,
        step=meta_all["step"],
        epoch=meta_all["epoch"],
        meta=meta_all["meta"],
        rng=rng,
    )
