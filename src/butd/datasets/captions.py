"""Karpathy-split caption data (COCO, Flickr8k, Flickr30k) joined to a :class:`~butd.shards.FeatureStore`.

The Karpathy JSON is ``{"dataset": .., "images": [{"split", "sentences": [{"tokens", "raw"}], "cocoid"?,
"filename", ..}]}``. An image's store id is ``str(cocoid)`` when present (COCO), else the file name without
extension (Flickr). The training split is ``train`` + ``restval`` by default.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from butd.datasets.json_list import NotAListError, iter_list
from butd.datasets.vocab import PAD, Vocab
from butd.errors import UserError
from butd.shards import FeatureStore

__all__ = ["CaptionDataError", "CaptionDataset", "CaptionImage", "DataConfig",
           "collate_captions", "featurize", "load_karpathy", "split_images"]

log = logging.getLogger(__name__)


class CaptionDataError(UserError):
    """Unusable caption input (malformed JSON, empty split, images missing from the store)."""


@dataclass(frozen=True)
class DataConfig:
    """Caption data options (YAML-overridable as the ``data`` section of a run config)."""

    min_count: int = 5  # words with fewer training occurrences map to UNK
    max_len: int = 16  # words kept per caption (BOS/EOS added on top)
    max_boxes: int = 100  # regions kept per image (the store's first ones)
    # append each region's box x1/W, y1/H, x2/W, y2/H (clipped to [0, 1]) as 4 more feature columns: the
    # transformer's box geometry reads them (region stores only)
    boxes: bool = False
    train_splits: tuple[str, ...] = ("train", "restval")
    # XE items: 0 = one item per (image, caption) pair; n > 0 = one item per image with n of its captions
    # (self-critical.pytorch seq_per_img: a random run of n consecutive references, or n drawn with
    # replacement when it has fewer), batched image-major (see collate_captions)
    captions_per_image: int = 0


@dataclass(frozen=True)
class CaptionImage:
    """One image of a Karpathy split: store id, split and its tokenised / raw references."""

    image_id: str
    split: str
    tokens: tuple[tuple[str, ...], ...]
    raw: tuple[str, ...]

    @property
    def refs(self) -> list[str]:
        """References as space-joined token strings (what CIDEr-D / BLEU expect)."""
        return [" ".join(t) for t in self.tokens]


def _tokenize(raw: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", raw.lower()).split()


def load_karpathy(path: str | Path) -> list[CaptionImage]:
    """Every image of a Karpathy-format JSON; raises :class:`CaptionDataError` (one line) when malformed.

    Images are parsed one at a time (:func:`~butd.datasets.json_list.iter_list`) and words are interned, so
    memory holds the file's text and the images kept, not every parsed object of the file at once.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CaptionDataError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise CaptionDataError(f"{path}: malformed JSON ({exc})") from None
    try:
        return [_caption_image(im, n, path) for n, im in enumerate(iter_list(text, "images"))]
    except CaptionDataError:
        raise
    except NotAListError:
        raise CaptionDataError(f"{path}: not a Karpathy split file (no 'images' list)") from None
    except ValueError as exc:
        raise CaptionDataError(f"{path}: malformed JSON ({exc})") from None


def _caption_image(im: Any, n: int, path: Path) -> CaptionImage:
    try:
        if im.get("cocoid") is not None:
            image_id = str(im["cocoid"])
        else:
            image_id = Path(im["filename"]).stem
        sents = im["sentences"]
        # one string object per distinct word (~25k on COCO), not one per token (6.5M)
        tokens = tuple(tuple(map(sys.intern, s["tokens"] if s.get("tokens") is not None else _tokenize(s["raw"])))
                       for s in sents)
        raw = tuple(str(s.get("raw", " ".join(t))) for s, t in zip(sents, tokens, strict=True))
        return CaptionImage(image_id, str(im["split"]), tokens, raw)
    except (KeyError, TypeError, AttributeError) as exc:
        raise CaptionDataError(f"{path}: image #{n} is malformed (missing or bad field {exc})") from None


def split_images(images: Sequence[CaptionImage], split: str,
                 train_splits: Sequence[str] = ("train", "restval")) -> list[CaptionImage]:
    """Images of ``split`` ("train" means all of ``train_splits``); an empty result is an error."""
    wanted = set(train_splits) if split == "train" else {split}
    out = [im for im in images if im.split in wanted and im.tokens]
    if not out:
        present = sorted({i.split for i in images})
        raise CaptionDataError(f"the split has no images (splits present: {', '.join(present)})", f"--split {split}",
                        f"pass one of {', '.join(present)}", usage=True)
    return out


def featurize(record: dict[str, Any], kind: str, config: DataConfig) -> np.ndarray:
    """The model input of one store record, float32 [K, D]: the first ``max_boxes`` regions, or every grid cell
    (with ``config.boxes``, [K, D + 4]: each region's normalised box appended, as ORT's relative boxes).

    The one featurize step of captioning: the Dataset and ``butd caption`` (new images) both call it, so a
    model sees the same rows at training time and on new photos.
    """
    feats = record["features"]
    if kind == "region":
        feats = feats[: config.max_boxes]
    if config.boxes:
        if kind != "region":
            raise CaptionDataError(f"data.boxes needs a region store, this one is {kind!r}", "data.boxes",
                                   "set data.boxes: false (and model.geometry: false) for grid features",
                                   usage=True)
        size = np.array([record["image_w"], record["image_h"]] * 2, dtype=np.float32)
        boxes = np.clip(np.asarray(record["boxes"][: len(feats)], dtype=np.float32) / size, 0.0, 1.0)
        return np.concatenate([np.asarray(feats, dtype=np.float32), boxes], axis=1)
    return np.array(feats, dtype=np.float32)  # a writable copy


class CaptionDataset(Dataset):
    """Items from a split joined to a feature store.

    ``per_caption=True`` (XE training): one item per (image, reference caption) pair, or, when
    ``config.captions_per_image`` = n > 0, one item per image holding n of its captions ("captions" [n, L]),
    chosen as self-critical.pytorch's loader does (``get_captions``): a run of n consecutive references from a
    random start, or n references drawn with replacement when the image has fewer. The draw is a pure function
    of (``seed``, epoch, image): :meth:`set_epoch` moves to the next epoch's draw, so a resumed run sees the
    same captions. ``per_caption=False`` (evaluation / SCST): one item per image, its caption is the first
    reference. Images absent from the store raise :class:`CaptionDataError` with their count unless
    ``skip_missing``.
    """

    def __init__(self, images: Sequence[CaptionImage], store: FeatureStore, vocab: Vocab, config: DataConfig,
                 *, per_caption: bool = True, skip_missing: bool = False, seed: int = 0) -> None:
        missing = [im.image_id for im in images if im.image_id not in store]
        if missing:
            msg = (f"{len(missing)} of {len(images)} images are missing from the feature store {store.path} "
                   f"(e.g. {missing[0]!r})")
            if not skip_missing:
                raise CaptionDataError(msg + "; pass skip_missing / --skip-missing to drop them")
            log.warning("%s; skipped", msg)
            gone = set(missing)
            images = [im for im in images if im.image_id not in gone]
        if not images:
            raise CaptionDataError("no images left to use (all missing from the feature store)")
        if store.kind not in ("region", "grid"):
            raise CaptionDataError(f"feature store kind {store.kind!r} is not 'region' or 'grid'")
        if config.captions_per_image < 0:
            raise CaptionDataError("captions_per_image must be 0 (one item per caption) or more",
                                   config.captions_per_image, "set data.captions_per_image to 0, or 1 or more",
                                   usage=True)
        if config.boxes and store.kind != "region":
            raise CaptionDataError(f"data.boxes needs a region store, {store.path} is {store.kind!r}", "data.boxes",
                                   "set data.boxes: false (and model.geometry: false) for grid features",
                                   usage=True)
        self.images = list(images)
        self.store, self.vocab, self.config, self.seed, self.epoch = store, vocab, config, seed, 0
        self.per_image = per_caption and config.captions_per_image > 0
        self.items: list[tuple[int, int]] = (
            [(i, j) for i, im in enumerate(self.images) for j in range(len(im.tokens))]
            if per_caption and not self.per_image else [(i, 0) for i in range(len(self.images))])

    @property
    def feature_dim(self) -> int:
        return self.store.feature_dim

    @property
    def rows_per_epoch(self) -> int:
        """Caption rows an epoch trains on (items x captions per item)."""
        return len(self.items) * (self.config.captions_per_image if self.per_image else 1)

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s caption draw (image-major items only; the training loop calls it)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def caption_choice(self, i: int) -> list[int]:
        """Indices of the references of image ``i`` in its item this epoch (self-critical ``get_captions``)."""
        n, have = self.config.captions_per_image, len(self.images[i].tokens)
        rng = np.random.default_rng((self.seed, self.epoch, i))
        if have < n:
            return [int(j) for j in rng.integers(0, have, n)]
        start = int(rng.integers(0, have - n + 1))
        return list(range(start, start + n))

    def features(self, image_id: str) -> np.ndarray:
        """Region (first ``max_boxes``) or grid features of one image, float32 [K, D]."""
        return featurize(self.store[image_id], self.store.kind, self.config)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        i, j = self.items[idx]
        im = self.images[i]
        item = {"features": torch.from_numpy(self.features(im.image_id)), "refs": im.refs, "image_id": im.image_id}
        if self.per_image:
            caps = [self.vocab.encode(im.tokens[c], self.config.max_len) for c in self.caption_choice(i)]
            item["captions"] = [torch.tensor(c, dtype=torch.long) for c in caps]
        else:
            item["caption"] = torch.tensor(self.vocab.encode(im.tokens[j], self.config.max_len), dtype=torch.long)
        return item


def collate_captions(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad features to the largest K in the batch (mask False on padding) and captions with PAD.

    Returns ``{"features": float32 [B, K, D], "mask": bool [B, K] (True = real region), "captions": long [N, L]
    (BOS w_1 .. w_n EOS, then PAD=0), "refs": B lists of reference strings, "image_ids": B store ids}``, B the
    items. Items with one ``caption`` give N = B; image items with ``captions`` (a list) give an image-major batch:
    N = their caption count and ``"image_index"``: long [N], the feature row of each caption row.
    """
    b = len(items)
    k = max(int(it["features"].shape[0]) for it in items)
    d = int(items[0]["features"].shape[1])
    image_major = "captions" in items[0]
    per_item = [list(it["captions"]) if image_major else [it["caption"]] for it in items]
    rows = [c for cs in per_item for c in cs]
    length = max(int(c.numel()) for c in rows)
    feats = torch.zeros(b, k, d)
    mask = torch.zeros(b, k, dtype=torch.bool)
    caps = torch.full((len(rows), length), PAD, dtype=torch.long)
    for n, it in enumerate(items):
        kn = int(it["features"].shape[0])
        feats[n, :kn] = it["features"]
        mask[n, :kn] = True
    for r, c in enumerate(rows):
        caps[r, : c.numel()] = c
    batch = {"features": feats, "mask": mask, "captions": caps, "refs": [list(it["refs"]) for it in items],
             "image_ids": [it["image_id"] for it in items]}
    if image_major:
        batch["image_index"] = torch.repeat_interleave(torch.arange(b), torch.tensor([len(c) for c in per_item]))
    return batch
