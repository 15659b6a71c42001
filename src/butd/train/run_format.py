"""The run directory both tasks write and read (specified in RUNS.md).

run.json records the task, the model, every data file twice (absolute, and relative to the run, so a
run moved together with its data or used from another working directory still finds it), and the
feature store's kind, feature width, extractor config and manifest sha256. Weights are always
``checkpoints/{last,best}.pt`` with the same metadata keys for every task.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from butd.errors import UserError
from butd.shards import FeatureStore, sha256_file
from butd.shards.spec import MANIFEST_NAME

__all__ = ["RUN_FORMAT", "RUN_VERSION", "begin_run", "checkpoint_meta", "data_entry", "finish_run", "read_run",
           "resolve_data", "store_facts", "write_run"]

RUN_FORMAT = "butd-run"
RUN_VERSION = 1


def data_entry(path: str | Path, run_dir: str | Path) -> dict[str, str]:
    """``{"path": absolute, "relative": relative to the run directory}`` of one input file."""
    absolute = Path(path).resolve()
    try:
        relative = os.path.relpath(absolute, Path(run_dir).resolve())
    except ValueError:  # another drive (Windows): only the absolute path is meaningful
        relative = str(absolute)
    return {"path": str(absolute), "relative": relative}


def store_facts(store: FeatureStore) -> dict[str, Any]:
    """What a run needs to know about the store it was trained on (for checks and for new images)."""
    return {"kind": store.kind, "feature_dim": store.feature_dim, "dims": store.dims,
            "extractor": store.manifest.get("extractor"),
            "manifest_sha256": sha256_file(store.path / MANIFEST_NAME)}


def checkpoint_meta(task: str, model: str, config: dict[str, Any], vocab: list[str], store: dict[str, Any],
                    **extra: Any) -> dict[str, Any]:
    """Metadata every checkpoint carries (same keys for every task; ``extra`` adds task facts)."""
    return {"task": task, "model": model, "config": config, "vocab": vocab,
            "feature_dim": int(store["feature_dim"]), "store": store, **extra}


def write_run(run_dir: str | Path, *, task: str, model: str, data: dict[str, Any], store: dict[str, Any],
              world_size: int = 1, **extra: Any) -> dict[str, Any]:
    """Write run.json; ``data`` maps names to a path, a list of paths, or None."""
    run_dir = Path(run_dir)

    def entry(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, list | tuple):
            return [data_entry(v, run_dir) for v in value]
        return data_entry(value, run_dir)

    info = {"format": RUN_FORMAT, "version": RUN_VERSION, "task": task, "model": model,
            "data": {k: entry(v) for k, v in data.items()}, "store": store, "vocab": "vocab.json",
            "checkpoints": {"best": "checkpoints/best.pt", "last": "checkpoints/last.pt"},
            "world_size": world_size, **extra}
    _write_text(run_dir / "run.json", json.dumps(info, indent=2))
    return info


def begin_run(run_dir: str | Path, config: Any, vocab: Any, **run: Any) -> dict[str, Any]:
    """What every trainer writes before its first step, at the same moment for both tasks: config.yaml (the
    merged config, for people; checkpoints carry it for programs), vocab.json and run.json (status
    "training"; ``run``: :func:`write_run`'s keywords)."""
    import yaml

    from butd.config import to_plain

    run_dir = Path(run_dir)
    _write_text(run_dir / "config.yaml", yaml.safe_dump(to_plain(config), sort_keys=False))
    vocab.save(run_dir / "vocab.json")
    return write_run(run_dir, status="training", **run)


def finish_run(run_dir: str | Path, summary: dict[str, Any]) -> dict[str, Any]:
    """run.json once training ended: status "finished" and the trainer's summary."""
    path = Path(run_dir) / "run.json"
    info = json.loads(path.read_text(encoding="utf-8"))
    info.update(status="finished", summary=summary)
    _write_text(path, json.dumps(info, indent=2))
    return info


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """run.json of a finished run, checked for the format and task."""
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not path.is_file():
        raise UserError("no run.json, so this is not a finished butd run", run_dir,
                        "pass the --out directory of `butd train`", usage=True)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"run.json is unreadable ({exc})", path, "train the run again") from None
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT or info.get("task") not in ("caption", "vqa"):
        raise UserError("run.json is not a butd run of this version", path,
                        "train the run again with this version of butd")
    return info


def _resolve_one(run_dir: Path, entry: dict[str, str], flag: str) -> str:
    for cand in (run_dir / entry["relative"], Path(entry["path"])):
        if cand.exists():
            return str(cand.resolve())
    raise UserError("a file the run was trained on is gone", entry["path"],
                    f"pass {flag} with its new location")


def resolve_data(run_dir: str | Path, info: dict[str, Any], key: str, override: Any = None) -> Any:
    """Where the run's ``key`` input lives now: ``override`` if given, else relative to the run, else absolute.

    Returns a path string, a list of them, or None (the run had none).
    """
    flag = "--" + key.replace("_", "-")
    if override:
        paths = [override] if isinstance(override, str | Path) else list(override)
        for p in paths:
            if not Path(p).exists():
                raise UserError("no such file or directory", p, f"check the {flag} value", usage=True)
        return str(paths[0]) if isinstance(override, str | Path) else [str(p) for p in paths]
    value = info["data"].get(key)
    if value is None:
        return None
    if isinstance(value, list):
        return [_resolve_one(Path(run_dir), e, flag) for e in value]
    return _resolve_one(Path(run_dir), value, flag)
