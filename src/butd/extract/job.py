"""``butd extract`` as one library call: every rule of an extraction, then the Ray runner, then verification.

:func:`extract` checks the options (weights are explicit, options that contradict each other, a GPU asked
for but absent), lists the images of the source layout (a root that holds none of them is refused), runs
:func:`~butd.extract.runner.run_extraction` into the store (which owns the folder: lock, resume, failures)
and verifies the result. A Python caller gets the same rules as the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from butd.errors import UserError
from butd.extract.summary import Summary

__all__ = ["check_weights", "extract"]


def check_weights(extractor: str, weights: str | None, warn: Callable[[str], None] | None = None) -> None:
    """Weights are explicit: an extractor without shipped weights needs ``--weights FILE`` (or ``random``,
    said out loud), and a file or an ImageNet download is checked here, before any worker starts."""
    from butd.extract.registry import EXTRACTORS

    info = EXTRACTORS.entry(extractor).info
    if weights is None and not info.get("shipped_weights"):
        hint = "--weights FILE (README: published checkpoints)"
        if info.get("imagenet"):
            hint += ", --weights imagenet"
        raise UserError(f"{extractor} has no shipped weights", "--weights not given",
                        f"pass {hint}, or --weights random for tests (meaningless features)", usage=True)
    if weights == "random":
        if warn is not None:
            warn(f"warning: {extractor} with random weights: the features are meaningless (tests only)")
    elif weights == "imagenet":
        if not info.get("imagenet"):
            raise UserError(f"{extractor} has no ImageNet weights", "--weights imagenet",
                            "pass --weights FILE (README: published checkpoints)", usage=True)
        if info.get("imagenet") != "shipped":
            from butd.extract.grid import fetch_imagenet

            fetch_imagenet(extractor)
    elif weights is not None and not Path(weights).is_file():
        raise UserError("no such weights file", weights, "pass an existing --weights FILE", usage=True)


def extract(dataset: str, root: str | Path, extractor: str, out: str | Path, *, settings: dict[str, Any] | None = None,
            config_file: str | Path | None = None, boxes_file: str | Path | None = None, address: str | None = None,
            workers: int | None = None, threads: int | None = None, shard_size: int = 1000, batch_size: int = 8,
            progress: bool = True, verify: bool = True, verbose: bool = False,
            log: Callable[[str], None] | None = None) -> Summary:
    """Extract every image of ``dataset`` (a source layout) under ``root`` with ``extractor`` into ``out``.

    ``settings``: the extractor config's fields given on the command line (``mode``, ``weights``, ``device``,
    ``fp16``, ``image_size``, ``min_boxes``, ``max_boxes``, ``conf_thresh``, ``box_source``, ``boxes_policy``;
    None = the config file's or the extractor's default), over ``config_file`` (YAML). Returns the summary
    (its ``exit_code``: 0 all stored, 3 some images unreadable).
    """
    from butd.config import read_yaml
    from butd.devices import resolve_device
    from butd.extract.registry import extractor_config
    from butd.extract.runner import run_extraction
    from butd.extract.sources import iter_source, load_boxes, with_boxes
    from butd.shards import verify_store

    given = {k: v for k, v in (settings or {}).items() if v is not None}
    if given.get("boxes_policy") == "airsplay-36" and given.get("box_source") == "proposals":
        raise UserError("--boxes-policy airsplay-36 stores the regressed boxes", "--box-source proposals",
                        "drop --box-source (it applies to --boxes-policy caffe only)", usage=True)
    if given.get("device") == "auto":
        given.pop("device")  # the config file's or the extractor's default (auto)
    cfg = extractor_config(extractor, read_yaml(config_file) if config_file else None, **given)
    if address is None and str(cfg.device).startswith("cuda"):  # a GPU asked for but absent stops here
        resolve_device(cfg.device)
    check_weights(extractor, cfg.weights, log)
    if log is not None:
        log(f"extractor {extractor}, mode {cfg.mode}, weights {cfg.weights or 'shipped'}")
    items = iter_source(dataset, root, mode=cfg.mode)
    if boxes_file:
        items = with_boxes(items, load_boxes(boxes_file))
    items = list(items)
    if items and not any(Path(it.path).is_file() for it in items):
        raise UserError(f"none of the {len(items)} images the {dataset} layout lists exists "
                        f"(first: {items[0].path})", root, "check --root, or choose the --dataset of its layout",
                        usage=True)
    summary = run_extraction(items, cfg, out, address=address, workers=workers, shard_size=shard_size,
                             batch_size=batch_size, progress=progress, threads=threads, verbose=verbose,
                             source_info={"dataset": dataset, "root": str(Path(root).resolve())}, log=log)
    if verify:
        report = verify_store(out, progress=False)
        if not report.ok:
            for problem in report.problems:
                if log is not None:
                    log(f"verify: {problem}")
            raise UserError("the store failed verification", out, "extract into a new --out")
    return summary
