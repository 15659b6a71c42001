"""Every training recipe in configs/ loads, and the values RECIPES.md promises are the ones the files hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from butd.train.caption import load_caption_config
from butd.train.vqa import load_config as load_vqa_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CAPTION = ["updown.yaml", "updown-paper.yaml", "sat-soft.yaml", "sat-hard.yaml", "transformer.yaml"]
VQA = ["vqa.yaml", "vqa-paper.yaml"]


@pytest.mark.parametrize("name", CAPTION)
def test_caption_recipes_load(name: str) -> None:
    cfg = load_caption_config(CONFIGS / name)
    assert cfg.decode.beam == 5 and cfg.decode.max_len == 20


@pytest.mark.parametrize("name", VQA)
def test_vqa_recipes_load(name: str) -> None:
    cfg = load_vqa_config(CONFIGS / name)
    assert (cfg.loop.batch_size, cfg.loop.lr, cfg.optimizer, cfg.data.answers_from) == (512, 2e-3, "adamax", "train")


def test_updown_recipes_differ_where_the_references_do() -> None:
    sc, caffe = load_caption_config(CONFIGS / "updown.yaml"), load_caption_config(CONFIGS / "updown-paper.yaml")
    # self-critical.pytorch: Adam 5e-4 x0.8 every 3 epochs, elementwise clip 0.1, scheduled sampling to 0.25,
    # EOS kept in the reward, no repeat block
    assert (sc.xe.lr, sc.xe.clip_mode, sc.xe.grad_clip) == (5e-4, "value", 0.1)
    assert (sc.xe.schedule.name, sc.xe.schedule.decay_every, sc.xe.schedule.gamma) == ("step", 3, 0.8)
    assert sc.scheduled_sampling.max_prob == 0.25 and sc.scst_objective.reward_eos
    assert not sc.decode.block_repeats
    # Caffe: the repeat block with the allowed list, 5 beams as SCST samples with their mean as baseline
    assert caffe.decode.block_repeats and "a" in caffe.decode.allowed_repeats
    assert (caffe.scst_objective.baseline, caffe.scst_objective.reward_eos) == ("mean", False)


def test_transformer_recipe_is_self_criticals() -> None:
    from butd.models.registry import build_caption_model

    cfg = load_caption_config(CONFIGS / "transformer.yaml")
    # configs/transformer/transformer.yml: 6+6 layers, d_model 512, 8 heads, d_ff 2048, dropout 0.1, noamopt with
    # warmup 20000 (factor 1), 15 epochs of 10 images x 5, no scheduled sampling; get_std_opt's Adam 0.9/0.98, 1e-9
    model = build_caption_model("transformer", 10, 2048, cfg.model).config
    assert (model.enc_layers, model.dec_layers, model.d_model, model.heads, model.d_ff, model.dropout) == \
        (6, 6, 512, 8, 2048, 0.1)
    assert model.feat_dropout == 0.5 and not model.geometry  # drop_prob_lm default; use_box off
    assert (cfg.xe.schedule.name, cfg.xe.schedule.unit, cfg.xe.schedule.warmup) == ("noam", "steps", 20000)
    assert cfg.xe.lr == pytest.approx((512 * 20000) ** -0.5) and (cfg.xe.epochs, cfg.xe.batch_size) == (15, 50)
    assert (cfg.adam_betas, cfg.adam_eps, cfg.scheduled_sampling.start) == ((0.9, 0.98), 1e-9, -1)
    assert (cfg.xe.clip_mode, cfg.xe.grad_clip) == ("value", 0.1)
    # transformer_nscl.yml: new self-critical (mean of the other samples), 5 samples, lr 5e-6 constant, 15 -> 40
    assert (cfg.scst_objective.baseline, cfg.scst_objective.samples, cfg.scst.lr) == ("mean", 5, 5e-6)
    assert (cfg.scst.epochs, cfg.scst.batch_size, cfg.scst.schedule.name) == (25, 10, "constant")


def test_defaults_are_the_reference_recipes() -> None:
    caption = load_caption_config(None)
    assert caption.xe.clip_mode == "value" and caption.xe.schedule.name == "step"
    assert caption.scheduled_sampling.start == 0 and caption.decode.beam == 5
    vqa = load_vqa_config(None)
    assert (vqa.loop.epochs, vqa.loop.schedule.name, vqa.loop.min_steps_per_epoch) == (30, "constant", 50)
