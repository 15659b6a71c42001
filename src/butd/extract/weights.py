"""Detector weights: convert the published checkpoints to safetensors, and load them strictly.

Sources (key names looked up in the public repositories):

* ``faster_rcnn_from_caffe_attr.pkl`` (airsplay/py-bottom-up-attention): a pickle
  ``{"model": {name: np.ndarray}, ...}`` with detectron2 names; read with a restricted unpickler that
  only admits numpy array reconstruction, so a crafted pickle cannot run code.
* ``bua-caffe-frcn-r101_with_attributes.pth`` (MILVLG/bottom-up-attention.pytorch): read with
  ``torch.load(weights_only=True)``; same detectron2 names except the attribute head
  (``cls_embed`` / ``attr_linear1`` / ``attr_linear2``) and the Caffe-layout RPN / class heads.

The output safetensors carries our module's keys (= detectron2 keys) plus metadata ``layout``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from butd.errors import UserError
from butd.shards.legacy_pickle import UnsafePickleError, restricted_loads  # noqa: F401 (raised by the readers)

FORMAT = "butd-bua-r101"
# published name -> our name (bottom-up-attention.pytorch attribute head)
RENAMES = {
    "roi_heads.box_predictor.cls_embed.": "roi_heads.box_predictor.cls_embedding.",
    "roi_heads.box_predictor.attr_linear1.": "roi_heads.box_predictor.fc_attr.",
    "roi_heads.box_predictor.attr_linear2.": "roi_heads.box_predictor.attr_score.",
}
DROPPED_SUFFIXES = ("num_batches_tracked",)  # BatchNorm step counters (bottom-up-attention.pytorch's "BN")
# detectron2 buffers that older releases (v0.2.1, bottom-up-attention.pytorch's pin) save: checked, not kept
PIXEL_KEYS = ("pixel_mean", "pixel_std")
ANCHOR_PREFIX = "proposal_generator.anchor_generator.cell_anchors."
OBJECTNESS_KEY = "proposal_generator.rpn_head.objectness_logits.weight"


class WeightsError(ValueError):
    """A checkpoint that cannot be converted or loaded (bad format, key or shape mismatch)."""


# One restricted unpickler for every legacy pickle the project reads (see butd.shards.legacy_pickle).
restricted_load = restricted_loads


def _read_source(src: Path) -> dict:
    data = src.read_bytes()
    is_torch = data[:4] == b"PK\x03\x04" or src.suffix in (".pth", ".pt")
    try:
        if not is_torch:  # plain pickle: py-bottom-up-attention .pkl
            obj = restricted_load(data)
        else:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file: one line, not the unpickler's traceback
        raise UserError(f"not a detector checkpoint ({type(e).__name__}: {str(e)[:80]})", src,
                        "pass the published .pkl (py-bottom-up-attention) or .pth (bottom-up-attention.pytorch); "
                        "README: published checkpoints", usage=True) from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{src}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def normalize_names(state: dict) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """Published names -> ours; returns (tensors, dropped names, number renamed)."""
    out: dict[str, torch.Tensor] = {}
    dropped, renamed = [], 0
    for name, value in state.items():
        name = str(name)
        if name.startswith("module."):
            name = name[len("module."):]
        if name.endswith(DROPPED_SUFFIXES):
            dropped.append(name)
            continue
        for old, new in RENAMES.items():
            if name.startswith(old):
                name, renamed = new + name[len(old):], renamed + 1
        t = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
        if not isinstance(t, torch.Tensor):
            raise WeightsError(f"{name}: expected an array, got {type(value).__name__}")
        if t.is_floating_point() and t.dtype != torch.float32:
            t = t.float()
        out[name] = t.contiguous()
    return out, dropped, renamed


def infer_layout(state: dict[str, torch.Tensor]) -> str:
    w = state.get(OBJECTNESS_KEY)
    if w is None:
        raise WeightsError(f"not a BUTD detector checkpoint: no {OBJECTNESS_KEY}")
    return "caffe" if w.shape[0] == 24 else "d2"


def check_buffers(state: dict[str, torch.Tensor], layout: str, origin: str) -> list[str]:
    """Check, then remove, the detectron2 buffers a state dict may carry: stored cell anchors must equal
    the layout's (else the RPN weights belong to other anchors), pixel_mean must be the BGR means and
    pixel_std all ones. Returns the names removed; raises WeightsError with one line on a mismatch."""
    from butd.extract.bua_heads import LAYOUTS, RPN_DEFAULTS, d2_cell_anchors
    from butd.extract.preprocess import PIXEL_MEANS_BGR

    removed = []
    anchors = sorted(k for k in state if k.startswith(ANCHOR_PREFIX))
    if anchors:
        if anchors != [ANCHOR_PREFIX + "0"]:
            raise WeightsError(f"{origin}: anchors for {len(anchors)} feature maps ({', '.join(anchors)}); the "
                               "bua-r101 detector has one (res4): not a BUTD C4 checkpoint")
        lay = LAYOUTS[layout]
        ours = d2_cell_anchors(lay.anchor_sizes, RPN_DEFAULTS["aspect_ratios"])
        got = state[anchors[0]].float()
        if tuple(got.shape) != tuple(ours.shape) or not torch.allclose(got, ours, atol=1e-3, rtol=0):
            raise WeightsError(
                f"{origin}: stored cell anchors {np.round(got.numpy(), 1).tolist()} differ from the {layout} "
                f"layout's (detectron2 sizes {list(lay.anchor_sizes)}, ratios 0.5/1/2, offset 0): its RPN "
                "was trained for other anchors, so butd would propose wrong boxes; not converted")
        removed.append(anchors[0])
    for key, want in (("pixel_mean", PIXEL_MEANS_BGR), ("pixel_std", (1.0, 1.0, 1.0))):
        if key in state:
            v = state[key].float().flatten()
            if v.numel() != 3 or not torch.allclose(v, torch.tensor(want), atol=1e-3, rtol=0):
                raise WeightsError(f"{origin}: {key} {v.tolist()} is not {list(want)} (BGR, the published "
                                   "models' value); butd subtracts exactly those means: not converted")
            removed.append(key)
    for k in removed:
        del state[k]
    return removed


def check_state(model: torch.nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Strict key and shape check with a readable error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad = [f"{k}: {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
           for k in sorted(set(expected) & set(state)) if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        def show(xs):
            return ", ".join(xs[:12]) + (f", ... ({len(xs)} in all)" if len(xs) > 12 else "")

        parts = [f"{origin}: weights do not match the bua-r101 detector"]
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if bad:
            parts.append(f"shape mismatches: {show(bad)}")
        raise WeightsError("; ".join(parts))


def convert_checkpoint(src: str | Path, dest: str | Path,
                       build_model: Callable[[str], torch.nn.Module]) -> dict[str, Any]:
    """Convert a published checkpoint (.pkl or .pth) into safetensors with our key names.

    ``build_model(layout)`` gives the detector the converted weights must fit (detector.py owns it).
    """
    from safetensors.torch import save_file

    src, dest = Path(src), Path(dest)
    if dest.suffix != ".safetensors":
        raise WeightsError(f"destination must end in .safetensors, got {dest.name}")
    state, dropped, renamed = normalize_names(_read_source(src))
    layout = infer_layout(state)
    dropped += check_buffers(state, layout, str(src))
    check_state(build_model(layout), state, str(src))
    src_sha = hashlib.sha256(src.read_bytes()).hexdigest()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT, "layout": layout, "source": src.name,
                                         "source_sha256": src_sha})
    tmp.replace(dest)
    return {
        "source": str(src), "dest": str(dest), "layout": layout, "tensors": len(state),
        "parameters": int(sum(t.numel() for t in state.values())), "renamed": renamed,
        "dropped": dropped, "source_sha256": src_sha,
        "sha256": hashlib.sha256(dest.read_bytes()).hexdigest(),
    }


def read_detector_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str, str]:
    """(state dict, layout, sha256 of the file) of a converted safetensors file; detector.py builds the model."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a safetensors file ({e}); convert published checkpoints with "
                           "`butd weights convert SRC DEST.safetensors`") from e
    layout = meta.get("layout") or infer_layout(state)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return state, layout, h.hexdigest()
