"""Every model butd can train: name -> Entry(config dataclass, model class, task).

``butd train --model NAME`` finds its task here (``info["task"]``), so this table is the only model
list: the CLI choices, the docs and the parametrised tests all read it. A caption model is built as
``Model(vocab_size, feature_dim, config)``; a VQA model as
``Model(vocab_size, num_answers, feature_dim, config, embeddings)``.
To add a model: one file (config dataclass + model class) and one line here.
"""

from __future__ import annotations

from typing import Any

from butd.config import merge_config
from butd.registry import Entry, Registry

__all__ = ["MODELS", "build_caption_model", "caption_models", "task_of"]

MODELS = Registry("model", {
    "updown": Entry("butd.models.updown_caption:UpDownCaptionConfig", "butd.models.updown_caption:UpDownCaption",
                    "Up-Down captioner (Anderson et al. 2018): attention LSTM + language LSTM",
                    {"task": "caption"}),
    "sat-soft": Entry("butd.models.sat:SatConfig", "butd.models.sat:SatSoft",
                      "Show, Attend and Tell, soft attention (Xu et al. 2015)", {"task": "caption"}),
    "sat-hard": Entry("butd.models.sat_hard:SatHardConfig", "butd.models.sat_hard:SatHard",
                      "Show, Attend and Tell, hard attention trained with REINFORCE (Xu et al. 2015)",
                      {"task": "caption"}),
    "transformer": Entry("butd.models.transformer:TransformerConfig", "butd.models.transformer:TransformerCaption",
                         "Transformer captioner (Vaswani et al. 2017), pre-norm, cached decoding, optional ORT box "
                         "geometry", {"task": "caption"}),
    "vqa": Entry("butd.models.updown_vqa:UpDownVQAConfig", "butd.models.updown_vqa:UpDownVQA",
                 "Up-Down VQA (Teney et al. 2018): question-guided attention, soft-score classifier",
                 {"task": "vqa"}),
})


def task_of(name: str) -> str:
    """The task ("caption" or "vqa") a registered model is trained for."""
    return MODELS.entry(name).info["task"]


def caption_models() -> list[str]:
    return [n for n in MODELS.names() if task_of(n) == "caption"]


def build_caption_model(name: str, vocab_size: int, feature_dim: int, overrides: dict[str, Any] | None = None):
    """Instantiate a registered caption model with its default config updated by ``overrides``."""
    if name not in MODELS or task_of(name) != "caption":
        raise ValueError(f"unknown caption model {name!r} (known: {', '.join(caption_models())})")
    cfg = merge_config(MODELS.config_class(name)(), overrides, f"model {name}")
    return MODELS.builder(name)(vocab_size, feature_dim, cfg)
