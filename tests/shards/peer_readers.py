"""Readers of the exported layouts, written from each peer's documented format and called as its loader calls it.

Facts (not code) from: peteanderson80/bottom-up-attention ``tools/read_tsv.py`` / ruotianluo/self-critical.pytorch
``scripts/make_bu_data.py`` (pa-tsv), airsplay/lxmert ``src/utils.py`` ``load_obj_tsv`` (lxmert-tsv),
hengyuan-hu/bottom-up-attention-vqa ``dataset.py`` ``VQAFeatureDataset`` (hh-h5), the readers of
MILVLG/bottom-up-attention.pytorch's npz files (``np.load(path)['x']`` ...) and self-critical.pytorch
``captioning/data/dataloader.py`` ``HybridLoader`` (rl-dirs). Each returns ``{image id: {name: array}}``.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import pickle
import sys
from pathlib import Path

import h5py
import numpy as np

PA_FIELDNAMES = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
LXMERT_FIELDNAMES = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
                     "num_boxes", "boxes", "features"]


def read_pa_tsv(path: Path) -> dict[str, dict]:
    csv.field_size_limit(sys.maxsize)
    out = {}
    with open(path) as f:  # text mode, as the readers open it (csv handles the "\r\n" line ends)
        for item in csv.DictReader(f, delimiter="\t", fieldnames=PA_FIELDNAMES):
            n = int(item["num_boxes"])
            out[item["image_id"]] = {
                "image_w": int(item["image_w"]), "image_h": int(item["image_h"]), "num_boxes": n,
                **{k: np.frombuffer(base64.b64decode(item[k]), dtype=np.float32).reshape((n, -1))
                   for k in ("boxes", "features")}}
    return out


def read_lxmert_tsv(path: Path) -> dict[str, dict]:
    csv.field_size_limit(sys.maxsize)
    out = {}
    with open(path) as f:
        for item in csv.DictReader(f, LXMERT_FIELDNAMES, delimiter="\t"):
            for key in ("img_h", "img_w", "num_boxes"):
                item[key] = int(item[key])
            boxes = item["num_boxes"]
            for key, shape, dtype in [("objects_id", (boxes,), np.int64), ("objects_conf", (boxes,), np.float32),
                                      ("attrs_id", (boxes,), np.int64), ("attrs_conf", (boxes,), np.float32),
                                      ("boxes", (boxes, 4), np.float32), ("features", (boxes, -1), np.float32)]:
                item[key] = np.frombuffer(base64.b64decode(item[key]), dtype=dtype).reshape(shape)
            out[item["img_id"]] = item
    return out


def read_hh_h5(dataroot: Path, name: str) -> dict[int, dict]:
    """As VQAFeatureDataset(name, dictionary, dataroot): the pickled index, then the whole h5 arrays."""
    with open(os.path.join(dataroot, f"{name}36_imgid2idx.pkl"), "rb") as f:
        img_id2idx = pickle.load(f)  # our own export, a dict of ints
    with h5py.File(os.path.join(dataroot, f"{name}36.hdf5"), "r") as hf:
        features = np.array(hf.get("image_features"))
        spatials = np.array(hf.get("spatial_features"))
        bb = np.array(hf.get("image_bb"))
    assert all(type(k) is int and type(v) is int for k, v in img_id2idx.items())
    return {img_id: {"features": features[i], "spatials": spatials[i], "boxes": bb[i]}
            for img_id, i in img_id2idx.items()}


def read_npz_dir(root: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(root.rglob("*.npz")):
        with np.load(path) as z:  # allow_pickle=False: the files must open without unpickling
            out[path.relative_to(root).with_suffix("").as_posix()] = {k: z[k] for k in z.files}
    return out


def read_rl_dirs(prefix: Path, keys: list[str], *, boxes: bool = True) -> dict[str, dict]:
    """HybridLoader(dir, '.npz' / '.npy').get(key) for the att, fc and box folders of ``--input_*_dir``."""
    def get(db_path: Path, key: str, ext: str):
        data = open(os.path.join(db_path, key + ext), "rb").read()
        x = np.load(io.BytesIO(data))
        return (x["feat"] if "feat" in x else x["z"]) if ext == ".npz" else x

    att, fc, box = (prefix.with_name(f"{prefix.name}_{n}") for n in ("att", "fc", "box"))
    out = {}
    for key in keys:
        att_feat = get(att, key, ".npz")
        out[key] = {"att": att_feat, "att_rows": att_feat.reshape(-1, att_feat.shape[-1]), "fc": get(fc, key, ".npy")}
        if boxes:
            out[key]["box"] = get(box, key, ".npy")
    return out
