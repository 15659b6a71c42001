"""Exporters of a butd store into the layouts the community's loaders read (the reverse of ``importers``).

Each format is one module with a writer ``(store, out, plan, counts, progress) -> Staged`` that streams the
planned records (constant memory) into temporary names; :func:`export_store` plans the export, refuses what
the layout cannot hold (one line, before anything is written) and commits the output last.
"""

from __future__ import annotations

import json
from pathlib import Path

from butd.errors import UserError
from butd.registry import Entry, Registry
from butd.shards.exporters.common import LABELS, ExportPlan, ExportSummary, check_path_id, check_tsv_id
from butd.shards.store import FeatureStore

# name -> Entry(None, writer, doc, info). info: kinds (store kinds it holds), fixed (one box count per file),
# labels (needs objects/attributes), keeps (store fields written), ids ("tsv", "path" or "int": what an id must be).
# To add a format: one writer module and one line here; `butd shards export --format` lists it.
_REGION = ("boxes", "features", "num_boxes", "image_w", "image_h")
EXPORT_FORMATS = Registry("export format", {
    "pa-tsv": Entry(None, "butd.shards.exporters.tsv:write_pa_tsv",
                    "bottom-up-attention TSV (tools/generate_tsv.py): image_id, image_w, image_h, num_boxes, "
                    "boxes, features", {"kinds": ("region",), "fixed": False, "labels": False, "keeps": _REGION,
                                        "ids": "tsv"}),
    "lxmert-tsv": Entry(None, "butd.shards.exporters.tsv:write_lxmert_tsv",
                        "LXMERT TSV (src/utils.py load_obj_tsv): ids, objects/attributes with confidences, boxes, "
                        "features", {"kinds": ("region",), "fixed": True, "labels": True,
                                     "keeps": (*_REGION, *LABELS), "ids": "tsv"}),
    "hh-h5": Entry(None, "butd.shards.exporters.hh_h5:write_hh_h5",
                   "bottom-up-attention-vqa h5 + {name}_imgid2idx.pkl (VQAFeatureDataset)",
                   {"kinds": ("region",), "fixed": True, "labels": False,
                    "keeps": ("boxes", "features", "num_boxes", "image_w", "image_h"), "ids": "int"}),
    "npz-dir": Entry(None, "butd.shards.exporters.npz:write_npz_dir",
                     "bottom-up-attention.pytorch: one <id>.npz per image (x, bbox, num_bbox, image_h, image_w)",
                     {"kinds": ("region",), "fixed": False, "labels": False, "keeps": _REGION, "ids": "path"}),
    "rl-dirs": Entry(None, "butd.shards.exporters.rl_dirs:write_rl_dirs",
                     "self-critical.pytorch: OUT_att/<id>.npz (feat), OUT_fc/<id>.npy, OUT_box/<id>.npy",
                     {"kinds": ("region", "grid"), "fixed": False, "labels": False,
                      "keeps": ("boxes", "features", "num_boxes", "grid_h", "grid_w"), "ids": "path"}),
})


def plan_export(store: FeatureStore, fmt: str, *, top: int | None = None, pad: bool = False,
                ids: list[str] | None = None, id_format: str | None = None) -> ExportPlan:
    """Check that the layout ``fmt`` can hold ``store`` (with ``top`` / ``pad``) and fix the export's ids."""
    info = EXPORT_FORMATS.entry(fmt).info
    dims, kind = store.dims, store.kind
    if kind not in info["kinds"]:
        raise UserError(f"{fmt} holds region features; this is a {kind} store", store.path,
                        "export a region store (or a grid store as rl-dirs)", usage=True)
    if top is not None and top < 1:
        raise UserError("--top must be at least 1", str(top), "pass the number of boxes to keep, e.g. --top 36",
                        usage=True)
    if kind == "grid" and (top is not None or pad):
        raise UserError("--top and --pad apply to region stores", store.path, "drop them for a grid store",
                        usage=True)
    fields = set(dims.get("fields", ()))
    if info["labels"]:
        missing = [f for f in LABELS if f not in fields]
        if missing:
            raise UserError(f"{fmt} needs object and attribute labels; the store has no {', '.join(missing)}",
                            store.path, "export a store extracted with labels (bua-r101), or choose pa-tsv",
                            usage=True)
    boxes = None
    if kind == "region":
        lo, hi = int(dims["min_boxes"]), int(dims["max_boxes"])
        if info["fixed"]:
            if lo != hi and top is None and not pad:
                raise UserError(f"{fmt} holds the same number of boxes for every image; this store has {lo}..{hi}",
                                store.path, f"pass --top K (keep the K most confident, e.g. --top 36; add --pad "
                                f"for images with fewer) or --pad (zero boxes up to {hi})", usage=True)
            boxes = top if top is not None else hi
            if lo < boxes and not pad:
                raise UserError(f"--top {boxes}: some images have only {lo} boxes", store.path,
                                "add --pad (zero boxes), or choose a smaller --top", usage=True)
        elif pad:
            boxes = top if top is not None else hi
    keep = set(info["keeps"])
    store_ids = store.image_ids()
    if ids is None:
        chosen = store_ids
    else:
        known = set(store_ids)
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise UserError(f"{len(unknown)} id(s) of --ids are not in the store, e.g. {unknown[0]!r}", store.path,
                            "list ids the store holds (butd shards info)", usage=True)
        if len(set(ids)) != len(ids):
            raise UserError("--ids lists an image twice", fmt, "list each image once", usage=True)
        chosen = list(ids)
    out_ids = [_out_id(i, id_format, fmt) for i in chosen]
    if len(set(out_ids)) != len(out_ids):
        raise UserError("--id-format gives two images the same id", id_format, "use a format with {} in it",
                        usage=True)
    for i in out_ids:
        _check_id(i, info["ids"], fmt)
    return ExportPlan(fmt, kind, chosen, out_ids, boxes=boxes, top=top, pad=pad,
                      fields=tuple(sorted(fields & keep)), dropped=tuple(sorted(fields - keep)))


def _out_id(image_id: str, template: str | None, fmt: str) -> str:
    if template is None:
        return image_id
    if fmt == "hh-h5":
        raise UserError("--id-format does not apply to hh-h5", fmt,
                        "drop it: the loader's index maps the integer image ids", usage=True)
    value = int(image_id) if image_id.isdecimal() else image_id
    try:
        return template.format(value)
    except (ValueError, IndexError, KeyError) as exc:
        raise UserError(f"--id-format cannot format image id {image_id!r} ({exc})", template,
                        "use {} or {:012d} (numeric ids) in it", usage=True) from None


def _check_id(image_id: str, rule: str, fmt: str) -> None:
    if rule == "tsv":
        check_tsv_id(image_id, fmt)
    elif rule == "path":
        check_path_id(image_id, fmt)
    elif not (image_id.isdecimal() and str(int(image_id)) == image_id):
        raise UserError(f"{fmt}'s index maps integer image ids; this store has id {image_id!r}", fmt,
                        "export a store with COCO-style numeric ids, or choose pa-tsv / npz-dir", usage=True)


def load_ids(path: str | Path) -> list[str]:
    """``--ids FILE``: a JSON list of image ids (numbers or strings), the images to export in that order."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"unreadable ids file ({exc})", path, "pass a JSON list of image ids", usage=True) from None
    if not isinstance(data, list) or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in data):
        raise UserError("the ids file must be a JSON list of image ids", path, 'e.g. ["391895", "522418"]',
                        usage=True)
    return [str(i) for i in data]


def export_store(fmt: str, store: str | Path | FeatureStore, out: str | Path, *, top: int | None = None,
                 pad: bool = False, ids: list[str] | None = None, id_format: str | None = None,
                 progress: bool = True) -> ExportSummary:
    """Export ``store`` as ``fmt`` to ``out``; refuses (UserError) before writing anything the layout cannot hold."""
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    writer = EXPORT_FORMATS.builder(fmt)
    plan = plan_export(store, fmt, top=top, pad=pad, ids=ids, id_format=id_format)
    counts = ExportSummary(fmt, [], dropped=plan.dropped)
    staged = writer(store, Path(out), plan, counts, progress)
    try:
        counts.outputs = staged.commit()
    except BaseException:
        staged.abort()
        raise
    return counts


__all__ = ["EXPORT_FORMATS", "ExportPlan", "ExportSummary", "export_store", "load_ids", "plan_export"]
