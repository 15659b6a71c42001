"""Extractor registry: name -> Entry(config dataclass, builder ``(config) -> Extractor``), imported lazily.

Each extractor module holds its own frozen config dataclass beside its builder (``DetectorConfig`` in
detector.py, ``GridConfig`` in grid.py). The store manifest records ``asdict(config)`` and
:func:`config_from_manifest` gives back an equal config, so ``butd caption`` re-runs exactly the
extractor a run was trained on. To add an extractor: one module (config + builder) and one line here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import numpy as np

from butd.config import merge_config
from butd.registry import Entry, Registry

__all__ = ["EXTRACTORS", "MODES", "Extractor", "build_extractor", "config_from_manifest", "extractor_config",
           "names"]

MODES = ("detect", "grid", "boxes")

_GRID = "butd.extract.grid:GridConfig"
# weights facts: "shipped_weights" runs without --weights; "imagenet": torchvision downloads them ("torchvision")
_TV = {"imagenet": "torchvision"}
EXTRACTORS = Registry("extractor", {
    "bua-r101": Entry("butd.extract.detector:DetectorConfig", "butd.extract.detector:build",
                      "BUTD Faster R-CNN R101-C4, Visual Genome (Anderson et al. 2018): 10-100 regions"),
    "vgg16": Entry(_GRID, "butd.extract.grid:build_vgg16", "VGG-16 conv5_3 grid, 14x14x512 at 224 (SAT)", _TV),
    "vgg19": Entry(_GRID, "butd.extract.grid:build_vgg19", "VGG-19 conv5_4 grid, 14x14x512 at 224 (SAT)", _TV),
    "resnet101": Entry(_GRID, "butd.extract.grid:build_resnet101", "ResNet-101 layer4 grid, pooled to grid_size",
                       _TV),
    "resnet152": Entry(_GRID, "butd.extract.grid:build_resnet152", "ResNet-152 layer4 grid, pooled to grid_size",
                       _TV),
    "effnetlite0": Entry(_GRID, "butd.extract.grid:build_effnetlite0",
                         "EfficientNet-Lite0 head grid, 7x7x1280 at 224 (bundled ImageNet weights)",
                         {"shipped_weights": True, "imagenet": "shipped"}),
})


@runtime_checkable
class Extractor(Protocol):
    """What the runner needs from a feature extractor.

    ``preprocess`` runs in CPU decode tasks, possibly on another machine: it takes an RGB uint8
    image [H, W, 3] and returns picklable CPU data (numpy arrays / numbers) that ``extract`` batches.
    ``extract`` returns one store record per input (kind "region" or "grid", see the store spec);
    ``boxes`` gives per-image float32 [k, 4] x1y1x2y2 boxes in original image pixels (or None).
    Optionally, ``preprocessor()`` returns a picklable, model-free callable equal to ``preprocess``
    so decode workers never build the model.
    """

    name: str
    kind: str
    weights_sha256: str | None

    def config_dict(self) -> dict[str, Any]: ...

    def preprocess(self, image: np.ndarray) -> dict[str, Any]: ...

    def extract(self, batch: list[dict[str, Any]], boxes: list[np.ndarray | None] | None = None,
                ) -> list[dict[str, np.ndarray]]: ...

    def to(self, device: str) -> Any: ...


def extractor_config(name: str, overrides: dict[str, Any] | None = None, **fields: Any) -> Any:
    """The config of extractor ``name``: its defaults, then ``overrides`` (nested dicts), then ``fields``."""
    cfg = merge_config(EXTRACTORS.config_class(name)(), {**(overrides or {}), **fields, "name": name},
                       f"extractor {name}")
    return cfg


def config_from_manifest(extractor: dict[str, Any]) -> Any:
    """The config recorded in a store manifest's ``extractor`` entry (equal to the one that made the store)."""
    return extractor_config(extractor["name"], extractor["config"])


def build_extractor(name: str, cfg: Any = None) -> Extractor:
    """Build the extractor registered as ``name`` (``cfg.name`` is set to ``name``)."""
    cfg = extractor_config(name) if cfg is None else dataclasses.replace(cfg, name=name)
    return EXTRACTORS.build(name, cfg)


def names() -> list[str]:
    """All registered extractor names."""
    return EXTRACTORS.names()
