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
    # XE batches: self-critical 10 images x seq_per_img 5 captions; Caffe 100 images x 1 random caption;
    # arctic-captions batches of 64 captions
    assert (sc.xe.batch_size, sc.data.captions_per_image) == (10, 5)
    assert (caffe.xe.batch_size, caffe.data.captions_per_image) == (100, 1)
    for name in ("sat-soft.yaml", "sat-hard.yaml"):
        sat = load_caption_config(CONFIGS / name)
        assert (sat.xe.batch_size, sat.data.captions_per_image) == (64, 0)


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
    assert cfg.xe.lr == pytest.approx((512 * 20000) ** -0.5) and (cfg.xe.epochs, cfg.xe.batch_size) == (15, 10)
    assert cfg.data.captions_per_image == 5  # 10 images x 5 captions = [sc]'s 50 caption rows
    assert (cfg.adam_betas, cfg.adam_eps, cfg.scheduled_sampling.start) == ((0.9, 0.98), 1e-9, -1)
    assert (cfg.xe.clip_mode, cfg.xe.grad_clip) == ("value", 0.1)
    # transformer_nscl.yml: new self-critical (mean of the other samples), 5 samples, lr 5e-6 constant, 15 -> 40
    assert (cfg.scst_objective.baseline, cfg.scst_objective.samples, cfg.scst.lr) == ("mean", 5, 5e-6)
    assert (cfg.scst.epochs, cfg.scst.batch_size, cfg.scst.schedule.name) == (25, 10, "constant")


def test_defaults_are_the_reference_recipes() -> None:
    caption = load_caption_config(None)
    assert caption.xe.clip_mode == "value" and caption.xe.schedule.name == "step"
    assert (caption.xe.batch_size, caption.data.captions_per_image) == (10, 5)  # = configs/updown.yaml
    assert caption.scheduled_sampling.start == 0 and caption.decode.beam == 5
    vqa = load_vqa_config(None)
    assert (vqa.loop.epochs, vqa.loop.schedule.name, vqa.loop.min_steps_per_epoch) == (30, "constant", 50)


def test_vqa_default_is_bottom_up_attention_vqa_form_and_old_runs_keep_theirs() -> None:
    """configs/vqa.yaml == the dataclass default (HH's layers, chosen in BENCHMARKS.md); vqa-paper.yaml is the
    paper's; a checkpoint config from before the layer options loads as the paper's forms it was trained with."""
    from dataclasses import asdict

    from butd.train.vqa import with_layer_forms as _with_layer_forms

    default, hh, paper = load_vqa_config(None), load_vqa_config(CONFIGS / "vqa.yaml"), load_vqa_config(
        CONFIGS / "vqa-paper.yaml")
    assert default.model == hh.model
    assert (hh.model.layer, hh.model.attention, hh.model.classifier_dropout, hh.model.dropout) == (
        "relu_wn", "product", 0.5, 0.2)
    assert (hh.model.hidden_dim, hh.model.classifier_dim) == (1024, 2048)  # num_hid, 2 * num_hid
    assert (paper.model.layer, paper.model.attention, paper.model.hidden_dim) == ("gated_tanh", "concat", 512)
    old = asdict(paper)
    for key in ("layer", "attention", "classifier_dropout"):
        del old["model"][key]
    assert load_vqa_config(None, _with_layer_forms(old)).model == paper.model
    assert load_vqa_config(None, _with_layer_forms(asdict(hh))).model == hh.model
