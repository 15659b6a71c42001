"""Shared pieces of the exporters: the export plan (box counts, ids), record shaping and staged output.

Every exporter writes to temporary names (``NAME.tmp``, a file or a directory) and renames them into
place only after the last record is written, the file that makes the output look complete last; a
failure removes the temporaries. Nothing half-written ever carries a final name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from butd.errors import UserError
from butd.shards.manifest import fsync_dir
from butd.shards.spec import scalar

LABELS = ("objects_id", "objects_conf", "attrs_id", "attrs_conf")
_PER_BOX = ("boxes", "features", *LABELS, "cls_prob")


@dataclass(frozen=True)
class ExportPlan:
    """What one export writes: which images (in order, with their output ids) and how many boxes each.

    ``boxes`` is the fixed count of a fixed layout (every image gets exactly that many) or None;
    ``top`` keeps at most that many boxes per image, ``pad`` fills images up to ``boxes`` with zero boxes.
    """

    fmt: str
    kind: str
    ids: list[str]  # store ids, in output order
    out_ids: list[str]  # the id each one gets in the output (``--id-format``), same order
    boxes: int | None = None
    top: int | None = None
    pad: bool = False
    fields: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()  # store fields the layout has no place for


@dataclass
class ExportSummary:
    """What ``export_store`` wrote."""

    fmt: str
    outputs: list[Path]
    records: int = 0
    padded: int = 0  # images that got zero boxes appended
    cut: int = 0  # images that lost boxes to --top
    dropped: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


def shaped(rec: dict[str, np.ndarray], plan: ExportPlan, counts: ExportSummary) -> dict[str, np.ndarray]:
    """``rec`` with at most ``plan.top`` boxes, padded to ``plan.boxes`` when ``plan.pad``, float32 features.

    ``--top K`` keeps the K boxes with the highest ``objects_conf`` when the store has it (ties: store order),
    else the first K; kept boxes stay in store order. Padding appends zero boxes, features and labels.
    """
    out = {k: v for k, v in rec.items() if k in plan.fields}
    feats = rec["features"]
    out["features"] = feats if feats.dtype == np.float32 else feats.astype(np.float32)  # exact widening
    if plan.kind != "region":
        return out
    k = int(rec["num_boxes"])
    if plan.top is not None and k > plan.top:
        if "objects_conf" in rec:
            keep = np.sort(np.argsort(-rec["objects_conf"], kind="stable")[: plan.top])
        else:
            keep = np.arange(plan.top)
        out.update({name: out[name][keep] for name in _PER_BOX if name in out})
        k = plan.top
        counts.cut += 1
    if plan.boxes is not None and k < plan.boxes:
        if not plan.pad:  # the plan checks min_boxes up front; a store that lied about it lands here
            raise UserError(f"an image has {k} boxes but {plan.fmt} holds exactly {plan.boxes}", plan.fmt,
                            "add --pad (zero boxes)")
        extra = plan.boxes - k
        for name in _PER_BOX:
            if name in out:
                arr = out[name]
                out[name] = np.concatenate([arr, np.zeros((extra, *arr.shape[1:]), arr.dtype)])
        k = plan.boxes
        counts.padded += 1
    out["num_boxes"] = scalar(k)
    return out


def planned_records(store, plan: ExportPlan, counts: ExportSummary) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(output id, shaped record) for every planned image, one record in memory at a time: the ``--ids`` order,
    or for the whole store a sequential scan in shard order (the writers record the order they get)."""
    out_id = dict(zip(plan.ids, plan.out_ids, strict=True))
    if plan.ids == store.image_ids():  # the whole store in its own order: a sequential scan, shard by shard
        stream = store.items()
    else:
        stream = ((i, store[i]) for i in plan.ids)
    for image_id, rec in stream:
        counts.records += 1
        yield out_id[image_id], shaped(rec, plan, counts)


def progress_bar(plan: ExportPlan, progress: bool):
    """A tqdm bar over the planned images, shown only on a terminal."""
    return tqdm(total=len(plan.ids), desc=f"exporting {plan.fmt}", unit="img", disable=None if progress else True)


def write_staged(staged: Staged, write: Callable[[], None]) -> Staged:
    """Run ``write`` (which fills the temporaries); on any failure remove them and re-raise."""
    try:
        write()
    except BaseException:
        staged.abort()
        raise
    return staged


def check_tsv_id(image_id: str, fmt: str) -> None:
    """A TSV field is written bare: no tab, no line break, no quote (a csv reader would unquote it)."""
    if any(c in image_id for c in '\t\r\n"'):
        raise UserError(f"image id {image_id!r} contains a tab, line break or quote", fmt,
                        "export with --id-format, or --ids listing other images")


def check_path_id(image_id: str, fmt: str) -> None:
    """Ids that become file names must stay inside the output directory (a store may come from anywhere)."""
    if (image_id.startswith("/") or "\\" in image_id or "\0" in image_id
            or any(p in ("", ".", "..") for p in image_id.split("/"))):
        raise UserError(f"image id {image_id!r} cannot be a file name inside the output directory", fmt,
                        "export with --id-format, or --ids listing other images")


class Staged:
    """Final paths written under temporary names, renamed into place in the given order on :meth:`commit`.

    Put the path whose presence makes the output look complete last. Stale temporaries from a killed run
    are removed first; :meth:`abort` removes whatever this export created.
    """

    def __init__(self, finals: list[Path], dirs: bool = False) -> None:
        self.finals, self.dirs = [Path(p) for p in finals], dirs
        for final in self.finals:
            if final.exists() or final.is_symlink():
                raise UserError(f"{final.name} exists", final, "choose a new OUT, or remove it first", usage=True)
            if not final.parent.is_dir():
                raise UserError("the output's folder does not exist", final.parent, "create it first", usage=True)
        for tmp in self.temps:
            _remove(tmp)
        if dirs:
            for tmp in self.temps:
                tmp.mkdir()
        self.committed: list[Path] = []

    @property
    def temps(self) -> list[Path]:
        return [p.with_name(p.name + ".tmp") for p in self.finals]

    def tmp(self, final: Path) -> Path:
        return self.temps[self.finals.index(Path(final))]

    def commit(self) -> list[Path]:
        for tmp, final in zip(self.temps, self.finals, strict=True):
            if not self.dirs:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, final)
            self.committed.append(final)
        fsync_dir(self.finals[-1].parent)
        return self.finals

    def abort(self) -> None:
        for path in [*self.temps, *self.committed]:
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
