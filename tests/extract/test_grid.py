"""Registry and grid extractors: real EfficientNet-Lite0 ImageNet weights, VGG/ResNet grids, boxes mode."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from butd.extract.registry import Extractor, build_extractor, extractor_config, names


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: OpenMP spin-waiting on a shared, oversubscribed 2-core box is very slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _photos() -> dict[str, np.ndarray]:
    import matplotlib.cbook as cbook
    import skimage.data

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = np.asarray(Image.open(f).convert("RGB"))
    return {"cat": skimage.data.chelsea(), "coffee": skimage.data.coffee(), "grace": grace}


def test_registry_names_and_config(tmp_path: Path) -> None:
    assert {"bua-r101", "vgg16", "vgg19", "resnet101", "resnet152", "effnetlite0"} <= set(names())
    from butd.config import read_yaml

    (tmp_path / "c.yaml").write_text("image_size: 96\nroi_size: 3\nmean: [0.5, 0.5, 0.5]\n")
    cfg = extractor_config("effnetlite0", read_yaml(tmp_path / "c.yaml"), mode="boxes", weights=None)
    assert (cfg.image_size, cfg.mode, cfg.weights, cfg.roi_size, cfg.mean) == (96, "boxes", None, 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="mode must be 'grid' or 'boxes'"):
        extractor_config("effnetlite0", mode="detect")
    with pytest.raises(ValueError, match="unknown GridConfig key 'min_boxes'"):
        extractor_config("effnetlite0", min_boxes=3)
    with pytest.raises(ValueError, match="unknown extractor 'no-such-net'"):
        build_extractor("no-such-net")


def test_random_init_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_extractor("effnetlite0", extractor_config("effnetlite0", weights="random", image_size=64))
    assert torch.equal(torch.rand(3), expected)


def test_effnetlite0_real_imagenet_weights() -> None:
    ex = build_extractor("effnetlite0", extractor_config("effnetlite0", image_size=224))
    assert ex.kind == "grid" and isinstance(ex, Extractor) and len(ex.weights_sha256) == 64
    net = ex.body.net
    want = {"cat": {281, 282, 283, 284, 285}, "coffee": {504, 967, 968}, "grace": {652, 834, 457}}
    with torch.inference_mode():
        for name, img in _photos().items():
            prep = ex.preprocess(img)
            x = torch.from_numpy(prep["image"][None]).float() / 255
            x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
                [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            top5 = set(net(x).topk(5).indices[0].tolist())
            assert top5 & want[name], (name, top5)
            rec = ex.extract([prep])[0]
            assert rec["features"].shape == (49, 1280) and rec["features"].dtype == np.float32
            assert (int(rec["grid_h"]), int(rec["grid_w"])) == (7, 7)
            assert (int(rec["image_w"]), int(rec["image_h"])) == (img.shape[1], img.shape[0])


def test_effnetlite0_boxes_mode_and_weights_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    base = build_extractor("effnetlite0", extractor_config("effnetlite0", image_size=64))
    sd = {k: v.contiguous() for k, v in base.body.net.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save(sd, tmp_path / "w.pth")
    cat = _photos()["cat"]
    h, w = cat.shape[:2]
    boxes = np.array([[0, 0, w, h], [50, 40, 200, 220], [300, 10, 450, 200]], np.float32)
    recs = []
    for w in ("w.safetensors", "w.pth"):
        cfg = extractor_config("effnetlite0", mode="boxes", image_size=64, fp16=True,
                              weights=str(tmp_path / w))
        ex = build_extractor("effnetlite0", cfg)
        assert ex.kind == "region" and ex.weights_sha256 != base.weights_sha256
        rec = ex.extract([ex.preprocess(cat), ex.preprocess(cat[:100, :80])], [boxes, None])
        recs.append(rec)
    a, b = recs
    assert a[0]["features"].shape == (3, 1280) and a[0]["features"].dtype == np.float16
    np.testing.assert_array_equal(a[0]["features"], b[0]["features"])
    np.testing.assert_array_equal(a[0]["boxes"], boxes)
    assert int(a[0]["num_boxes"]) == 3 and not np.array_equal(a[0]["features"][1], a[0]["features"][2])
    assert a[1]["boxes"].tolist() == [[0, 0, 80, 100]] and int(a[1]["image_w"]) == 80  # whole image if none


@pytest.mark.parametrize("name,dim,stride", [("vgg16", 512, 16), ("vgg19", 512, 16), ("resnet101", 2048, 32)])
def test_torchvision_grids_random_init(name: str, dim: int, stride: int) -> None:
    with pytest.warns(UserWarning, match="RANDOM"):
        ex = build_extractor(name, extractor_config(name, weights="random", image_size=64, grid_size=3))
    last_conv = [m for m in ex.body.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert last_conv.out_channels == dim
    if name.startswith("vgg"):  # ends at conv5_3 / conv5_4 + ReLU, before the last max-pool
        assert isinstance(list(ex.body)[-1], torch.nn.ReLU)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in ex.body) == (13 if name == "vgg16" else 16)
    img = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    rec = ex.extract([ex.preprocess(img)])[0]
    side = 64 // stride if name.startswith("vgg") else 3
    assert rec["features"].shape == (side * side, dim) and int(rec["grid_h"]) == side
    if name != "resnet101":  # rebuilding VGG is slow; one architecture shows the seeded init is repeatable
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = build_extractor(name, extractor_config(name, weights="random", image_size=64,
                                                      grid_size=3))
    np.testing.assert_array_equal(again.extract([again.preprocess(img)])[0]["features"], rec["features"])
