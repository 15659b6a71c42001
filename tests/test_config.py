"""load_config: defaults, then YAML, then overrides; every config of the project round-trips through it."""

import dataclasses
import json
from pathlib import Path

import pytest

from butd.config import load_config, merge_config, to_plain
from butd.errors import UserError
from butd.extract.registry import EXTRACTORS
from butd.models.decoding import DecodeConfig
from butd.models.registry import MODELS
from butd.registry import resolve
from butd.train.caption import CaptionTrainConfig
from butd.train.loop import LoopConfig
from butd.train.scst import ScstConfig
from butd.train.vqa import VQATrainConfig

CONFIGS = {"caption train": CaptionTrainConfig, "vqa train": VQATrainConfig, "loop": LoopConfig,
           "decode": DecodeConfig, "scst": ScstConfig,
           **{f"model {n}": MODELS.entry(n).config for n in MODELS.names()},
           **{f"extractor {n}": EXTRACTORS.entry(n).config for n in EXTRACTORS.names()}}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_round_trips_through_json(name):
    cls = resolve(CONFIGS[name])
    cfg = cls()
    assert load_config(cls, None, json.loads(json.dumps(to_plain(cfg)))) == cfg


def test_yaml_then_overrides_nested_and_lists_become_tuples(tmp_path):
    (tmp_path / "c.yaml").write_text("model_name: sat-soft\nxe: {epochs: 3, lr: 0.1}\n"
                                     "data: {train_splits: [train]}\n")
    cfg = load_config(CaptionTrainConfig, tmp_path / "c.yaml", {"xe": {"epochs": 5}})
    assert cfg.model_name == "sat-soft" and cfg.xe.epochs == 5 and cfg.xe.lr == 0.1
    assert cfg.xe.batch_size == CaptionTrainConfig().xe.batch_size  # the nested default, not LoopConfig()'s
    assert cfg.data.train_splits == ("train",) and dataclasses.is_dataclass(cfg.data)


def test_mistakes_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError) as exc:
        load_config(CaptionTrainConfig, None, {"xe": {"epoch": 3}})
    assert exc.value.usage and exc.value.line().startswith("unknown LoopConfig key 'epoch' (overrides): known keys:")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UserError, match="expected a mapping at the top level"):
        load_config(LoopConfig, tmp_path / "list.yaml")
    with pytest.raises(UserError, match="bad GridConfig settings"):
        merge_config(resolve(EXTRACTORS.entry("vgg16").config)(), {"mode": "detect"})


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "extract").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_extractor_configs_load(path):
    from butd.config import read_yaml
    from butd.extract.registry import extractor_config

    data = read_yaml(path)
    cfg = extractor_config(data.pop("name"), data)
    assert cfg.name == path.stem


@pytest.mark.parametrize("path", sorted([*(REPO / "configs").glob("*.yaml"),
                                         *(REPO / "src" / "butd" / "demo_configs").glob("*.yaml")]),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_train_configs_load(path):
    model = path.stem.removesuffix("-paper")  # NAME-paper.yaml: the paper's variant of NAME's recipe
    cls = VQATrainConfig if model == "vqa" else CaptionTrainConfig
    cfg = load_config(cls, path)
    assert cfg.model_name == model  # each file trains the model it is named after
    if cls is CaptionTrainConfig:  # the model section is checked against that model's own config
        merge_config(MODELS.config_class(cfg.model_name)(), dict(cfg.model))
