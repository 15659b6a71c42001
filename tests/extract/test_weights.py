"""Checkpoint conversion (.pkl / .pth -> safetensors), strict loading and the restricted unpickler."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from butd.cli import main
from butd.extract import weights as W
from butd.extract.detector import BUTDDetector, convert_weights, load_detector

torch.set_num_threads(2)

# ---- the published checkpoints' names and shapes, written out independently of our modules ----
# detectron2 R-C4 names (py-bottom-up-attention faster_rcnn_from_caffe_attr.pkl); the stage layout
# of ResNet-101: (name, blocks, in, bottleneck, out)
STAGES = [("backbone.res2", 3, 64, 64, 256), ("backbone.res3", 4, 256, 128, 512),
          ("backbone.res4", 23, 512, 256, 1024), ("roi_heads.res5", 3, 1024, 512, 2048)]
BN = ("weight", "bias", "running_mean", "running_var")


def _conv(prefix, cout, cin, k, bn_extra=()):
    out = {f"{prefix}.weight": (cout, cin, k, k)}
    out.update({f"{prefix}.norm.{p}": (cout,) for p in BN + tuple(bn_extra)})
    return out


def published_shapes(flavour: str) -> dict[str, tuple]:
    """flavour "pkl": py-bottom-up-attention; "pth": bottom-up-attention.pytorch (bua-caffe)."""
    pth = flavour == "pth"
    # bua-caffe uses NORM "BN" with FREEZE_AT 3: res4/res5 keep BatchNorm2d's num_batches_tracked
    shapes = _conv("backbone.stem.conv1", 64, 3, 7)
    for stage, n, cin, mid, cout in STAGES:
        extra = ("num_batches_tracked",) if pth and stage in ("backbone.res4", "roi_heads.res5") else ()
        for i in range(n):
            p, ci = f"{stage}.{i}", (cin if i == 0 else cout)
            if i == 0:
                shapes.update(_conv(f"{p}.shortcut", cout, ci, 1, extra))
            shapes.update(_conv(f"{p}.conv1", mid, ci, 1, extra))
            shapes.update(_conv(f"{p}.conv2", mid, mid, 3, extra))
            shapes.update(_conv(f"{p}.conv3", cout, mid, 1, extra))
    a = 12  # 4 sizes x 3 aspect ratios
    rpn = "proposal_generator.rpn_head"
    shapes.update({f"{rpn}.conv.weight": (512, 1024, 3, 3), f"{rpn}.conv.bias": (512,),
                   f"{rpn}.objectness_logits.weight": ((2 * a if pth else a), 512, 1, 1),
                   f"{rpn}.objectness_logits.bias": ((2 * a if pth else a),),
                   f"{rpn}.anchor_deltas.weight": (4 * a, 512, 1, 1), f"{rpn}.anchor_deltas.bias": (4 * a,)})
    bp = "roi_heads.box_predictor"
    nbox = 1601 if pth else 1600
    shapes.update({f"{bp}.cls_score.weight": (1601, 2048), f"{bp}.cls_score.bias": (1601,),
                   f"{bp}.bbox_pred.weight": (nbox * 4, 2048), f"{bp}.bbox_pred.bias": (nbox * 4,)})
    if pth:
        shapes.update({f"{bp}.cls_embed.weight": (1601, 256),
                       f"{bp}.attr_linear1.weight": (512, 2304), f"{bp}.attr_linear1.bias": (512,),
                       f"{bp}.attr_linear2.weight": (401, 512), f"{bp}.attr_linear2.bias": (401,)})
    else:
        shapes.update({f"{bp}.cls_embedding.weight": (1601, 256),
                       f"{bp}.fc_attr.weight": (512, 2304), f"{bp}.fc_attr.bias": (512,),
                       f"{bp}.attr_score.weight": (401, 512), f"{bp}.attr_score.bias": (401,)})
    return shapes


def synthetic(flavour: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in published_shapes(flavour).items():
        if name.endswith("num_batches_tracked"):
            out[name] = np.asarray(270000, np.int64)
        else:
            out[name] = rng.standard_normal(shape, dtype=np.float32)
    return out


def _ours(name: str) -> str:
    for old, new in W.RENAMES.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


@pytest.mark.parametrize("flavour,layout", [("pkl", "d2"), ("pth", "caffe")])
def test_our_modules_carry_the_published_names(flavour, layout):
    ours = {k: tuple(v.shape) for k, v in BUTDDetector(layout).state_dict().items()}
    pub = {_ours(k): v for k, v in published_shapes(flavour).items() if not k.endswith("num_batches_tracked")}
    assert ours == pub


@pytest.fixture(scope="module")
def pkl_source(tmp_path_factory):
    state = synthetic("pkl", 1)
    path = tmp_path_factory.mktemp("ckpt") / "faster_rcnn_from_caffe_attr.pkl"
    with open(path, "wb") as f:  # protocol 2, as a python-2 era detectron2 pickle
        pickle.dump({"model": state, "__author__": "BUTD-test", "matching_heuristics": True}, f, protocol=2)
    return path, state


@pytest.fixture(scope="module")
def pth_source(tmp_path_factory):
    state = synthetic("pth", 2)
    path = tmp_path_factory.mktemp("ckpt") / "bua-caffe-frcn-r101_with_attributes.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    return path, state


def _check_converted(dest, state, layout):
    model, sha = load_detector(dest)
    assert model.layout.name == layout and len(sha) == 64
    sd = model.state_dict()
    n = 0
    for name, arr in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        got = sd[_ours(name)].numpy()
        assert got.dtype == arr.dtype and got.shape == arr.shape
        assert got.tobytes() == arr.tobytes(), name  # bit-exact
        n += 1
    assert n == len(sd)


def test_convert_pkl_bit_exact(pkl_source, tmp_path):
    src, state = pkl_source
    summary = convert_weights(src, tmp_path / "bua.safetensors")
    assert summary["layout"] == "d2" and summary["tensors"] == len(state) and summary["dropped"] == []
    _check_converted(tmp_path / "bua.safetensors", state, "d2")


def test_convert_pth_bit_exact(pth_source, tmp_path):
    src, state = pth_source
    summary = convert_weights(src, tmp_path / "bua.safetensors")
    assert summary["layout"] == "caffe" and summary["renamed"] == 5
    assert summary["dropped"] and all(d.endswith("num_batches_tracked") for d in summary["dropped"])
    _check_converted(tmp_path / "bua.safetensors", state, "caffe")
    from butd.extract.detector import BUTDExtractor

    ex = BUTDExtractor(tmp_path / "bua.safetensors")
    assert ex.weights_sha256 == summary["sha256"] and ex.config_dict()["layout"] == "caffe"


def test_convert_cli(pkl_source, tmp_path):
    from click.testing import CliRunner

    res = CliRunner().invoke(main, ["weights", "convert", str(pkl_source[0]), str(tmp_path / "w.safetensors")])
    assert res.exit_code == 0, res.output
    assert "layout d2" in res.output and (tmp_path / "w.safetensors").is_file()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_rejected_without_running(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps({"model": {"x": _Evil(marker)}}, protocol=2))
    with pytest.raises(W.UnsafePickleError, match=r"system"):
        convert_weights(src, tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_restricted_unpickler_reads_numpy_pickles():
    arrs = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float32(3.5)}
    for proto in (2, 4):
        back = W.restricted_load(pickle.dumps({"model": arrs}, protocol=proto))["model"]
        np.testing.assert_array_equal(back["a"], arrs["a"])
        assert back["b"] == arrs["b"]


def test_key_mismatch_is_reported_clearly():
    model = BUTDDetector("d2")
    state = dict(model.state_dict())
    del state["backbone.res3.1.conv2.norm.running_var"]
    state["roi_heads.box_predictor.extra.weight"] = torch.zeros(1)
    state["roi_heads.box_predictor.attr_score.bias"] = torch.zeros(7)
    with pytest.raises(W.WeightsError) as e:
        W.check_state(model, state, "ckpt")
    msg = str(e.value)
    assert "missing keys: backbone.res3.1.conv2.norm.running_var" in msg
    assert "unexpected keys: roi_heads.box_predictor.extra.weight" in msg
    assert "roi_heads.box_predictor.attr_score.bias: (7,) != (401,)" in msg


def test_safetensors_key_mismatch_and_bad_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"proposal_generator.rpn_head.objectness_logits.weight": torch.zeros(12, 512, 1, 1)},
              str(tmp_path / "partial.safetensors"))
    with pytest.raises(W.WeightsError, match="missing keys"):
        load_detector(tmp_path / "partial.safetensors")
    (tmp_path / "x.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(W.WeightsError, match="butd weights convert"):
        load_detector(tmp_path / "x.safetensors")
    with pytest.raises(W.WeightsError, match=".safetensors"):
        convert_weights(tmp_path / "x.safetensors", tmp_path / "out.bin")
