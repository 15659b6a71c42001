"""The store manifest records asdict(extractor config) and gives back an equal config, for every extractor."""

import dataclasses
import json

import pytest

from butd.extract.registry import EXTRACTORS, config_from_manifest, extractor_config
from butd.extract.runner import manifest_entry

# a non-default setting per extractor family, so a lost field shows
CHANGED = {"bua-r101": {"mode": "boxes", "box_source": "regressed", "min_boxes": 36, "max_boxes": 36},
           "grid": {"mode": "boxes", "image_size": 96, "roi_size": 3, "fp16": True}}


def _changes(name: str) -> dict:
    family = type(extractor_config(name)).__name__
    return {"DetectorConfig": CHANGED["bua-r101"], "GridConfig": CHANGED["grid"]}.get(family, {"fp16": True})


@pytest.mark.parametrize("name", EXTRACTORS.names())
def test_manifest_round_trip_of_every_extractor(name):
    cfg = extractor_config(name, _changes(name), weights="w.safetensors")
    info = {"name": name, "details": {"feature_dim": 7}, "weights_sha256": "ab" * 32}
    entry = json.loads(json.dumps(manifest_entry(dataclasses.asdict(cfg), info)))  # as read back from JSON
    back = config_from_manifest(entry)
    assert back == cfg and type(back) is type(cfg)


def test_detector_boxes_mode_with_regressed_boxes_survives_the_manifest():
    """The bug: mode='boxes', box_source='regressed' came back as mode='grid' (and proposals)."""
    cfg = extractor_config("bua-r101", mode="boxes", box_source="regressed")
    back = config_from_manifest({"name": "bua-r101", "config": json.loads(json.dumps(dataclasses.asdict(cfg)))})
    assert (back.mode, back.box_source) == ("boxes", "regressed")
