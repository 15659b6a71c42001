"""Extractor registry: names -> builders ``(ExtractorConfig) -> Extractor``, imported lazily.

Modules holding extractors are imported only when one of their names is built, so importing this
module stays cheap (no torch / model code). A module registers with ``@register("name")``; a lazy
entry ``"module:attr"`` also works when the module exposes a plain builder function instead.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Extractor", "ExtractorConfig", "build_extractor", "names", "register", "resolve"]

MODES = ("detect", "grid", "boxes")


@dataclass(frozen=True)
class ExtractorConfig:
    """Everything an extractor needs to build itself; plain data, picklable, JSON-able via ``to_dict``."""

    name: str
    mode: str = "grid"  # "detect" (region detector) | "grid" (CNN feature map) | "boxes" (given boxes)
    weights: str | None = None  # a file path, "random", "imagenet" (torchvision download) or None (default)
    device: str = "auto"  # "auto" -> one model actor per GPU when the cluster has GPUs, else CPU
    fp16: bool = False
    min_boxes: int = 10
    max_boxes: int = 100
    conf_thresh: float = 0.2
    grid_size: int = 14
    image_size: int = 224
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 1 <= self.min_boxes <= self.max_boxes:
            raise ValueError("need 1 <= min_boxes <= max_boxes")
        if self.grid_size < 1 or self.image_size < 32:
            raise ValueError("grid_size must be >= 1 and image_size >= 32")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ExtractorConfig:
        """Copy with the given fields changed; ``None`` values are ignored (unset CLI options)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtractorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown extractor config key(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> ExtractorConfig:
        """Load a YAML mapping of config fields; non-None ``overrides`` win over the file."""
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of extractor config fields")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)


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


Builder = Callable[[ExtractorConfig], Extractor]

_REGISTRY: dict[str, Builder] = {}
# Not-yet-imported providers: "module" (registers on import) or "module:builder".
_LAZY: dict[str, str] = {
    "bua-r101": "butd.extract.detector:build",
    "vgg16": "butd.extract.grid",
    "vgg19": "butd.extract.grid",
    "resnet101": "butd.extract.grid",
    "resnet152": "butd.extract.grid",
    "effnetlite0": "butd.extract.grid",
}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``builder`` buildable as ``name``. Re-registering the same function is a no-op."""

    def deco(builder: Builder) -> Builder:
        old = _REGISTRY.get(name)
        if old is not None and getattr(old, "__qualname__", None) != getattr(builder, "__qualname__", None):
            raise ValueError(f"extractor {name!r} is already registered by {old!r}")
        _REGISTRY[name] = builder
        return builder

    return deco


def resolve(name: str) -> Builder:
    """The builder for ``name``, importing its module on first use."""
    if name not in _REGISTRY and name in _LAZY:
        module, _, attr = _LAZY[name].partition(":")
        mod = importlib.import_module(module)
        if name not in _REGISTRY and attr:
            _REGISTRY[name] = getattr(mod, attr)
    if name not in _REGISTRY:
        raise KeyError(f"unknown extractor {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def build_extractor(name: str, cfg: ExtractorConfig | None = None) -> Extractor:
    """Build the extractor registered as ``name`` (``cfg.name`` is set to ``name``)."""
    cfg = ExtractorConfig(name=name) if cfg is None else dataclasses.replace(cfg, name=name)
    return resolve(name)(cfg)


def names() -> list[str]:
    """All known extractor names (registered or lazily importable)."""
    return sorted(set(_REGISTRY) | set(_LAZY))
