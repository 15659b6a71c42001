"""Names for the detector's boxes: "brown dog" from a record's `objects_id` / `attrs_id`.

The store records ids only (features_spec.md §5: 0-based into the 1600 Visual Genome object classes
and the 400 attributes of bottom-up-attention's `data/genome/1600-400-20`). The name lists are not
shipped with butd, so names come from, first to last:
1. a directory the caller names that holds `objects_vocab.txt` and `attributes_vocab.txt`;
2. the manifest's optional `labels` = {"objects": [...], "attributes": [...]};
3. the same two files placed in the store directory.
Each vocab line is one class; where a line lists synonyms ("stop sign,stopsign") the first is used,
lower-cased, as bottom-up-attention's own tools read it. As in its demo notebook, an attribute is
named only when its confidence exceeds 0.1 (`attr_thresh`). Without names a box is labelled by its ids
("obj 12 attr 3"), so the picture still says which class the detector saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OBJECTS_FILE = "objects_vocab.txt"
ATTRIBUTES_FILE = "attributes_vocab.txt"
ATTR_THRESH = 0.1  # bottom-up-attention demo: attributes below this confidence are not shown


@dataclass(frozen=True)
class RegionNames:
    objects: tuple[str, ...]
    attributes: tuple[str, ...] = ()


def read_vocab(path: str | Path) -> tuple[str, ...]:
    """One name per non-empty line; the first of comma-separated synonyms, lower-cased."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return tuple(line.split(",")[0].strip().lower() for line in lines if line.strip())


def names_in_dir(directory: str | Path) -> RegionNames | None:
    """The two vocab files of `directory` (attributes optional), or None when it has no objects file."""
    d = Path(directory)
    if not (d / OBJECTS_FILE).is_file():
        return None
    attrs = read_vocab(d / ATTRIBUTES_FILE) if (d / ATTRIBUTES_FILE).is_file() else ()
    return RegionNames(read_vocab(d / OBJECTS_FILE), attrs)


def find_names(store: str | Path | None, manifest: Mapping[str, Any] | None = None,
               names_dir: str | Path | None = None) -> RegionNames | None:
    """Names for a store's ids in the order of the module docstring; None if there are none."""
    if names_dir is not None:
        found = names_in_dir(names_dir)
        if found is None:
            raise ValueError(f"no {OBJECTS_FILE} in {names_dir}")
        return found
    labels = (manifest or {}).get("labels") or {}
    if labels.get("objects"):
        return RegionNames(tuple(map(str, labels["objects"])), tuple(map(str, labels.get("attributes") or ())))
    return names_in_dir(store) if store is not None else None


def _name(names: tuple[str, ...], i: int) -> str | None:
    return names[i] if 0 <= i < len(names) else None


def box_labels(rec: Mapping[str, Any], names: RegionNames | None, k: int | None = None) -> tuple[str, ...]:
    """One label per box of a region record (the first `k`): "attribute object", or ids without names.

    Records without `objects_id` (imports of plain bottom-up TSV or h5 files) give empty labels.
    """
    if "objects_id" not in rec:
        n = len(rec["boxes"]) if "boxes" in rec else 0
        return ("",) * (n if k is None else min(n, k))
    obj = np.asarray(rec["objects_id"]).astype(np.int64).ravel()[:k]
    attr = np.asarray(rec["attrs_id"]).astype(np.int64).ravel()[:k] if "attrs_id" in rec else None
    conf = np.asarray(rec["attrs_conf"], dtype=np.float64).ravel()[:k] if "attrs_conf" in rec else None
    out = []
    for j, o in enumerate(obj.tolist()):
        shown = attr is not None and (conf is None or conf[j] > ATTR_THRESH)
        a = int(attr[j]) if shown else None
        if names is None:
            out.append(f"obj {o}" + (f" attr {a}" if a is not None else ""))
            continue
        obj_name = _name(names.objects, o) or f"obj {o}"
        attr_name = _name(names.attributes, a) if a is not None else None
        out.append(f"{attr_name} {obj_name}" if attr_name else obj_name)
    return tuple(out)
