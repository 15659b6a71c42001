"""Captioning models: the shared :class:`CaptionModel` interface and the name -> builder registry.

Every caption model works on a set of K feature vectors (regions, or the H*W cells of a grid) with a mask:

* ``init_state(feats [B, K, D], mask [B, K] bool) -> state``: a dict of batch-first tensors, so decoders can
  reorder / repeat it along dim 0 (beam search);
* ``step(tokens [B], state, feats, mask) -> (logprobs [B, V], state, attn [B, K])``: one decoding step;
* ``forward(batch)``: teacher forcing over ``batch["captions"]`` [B, L] (BOS .. EOS, PAD=0) returning
  ``{"logits": [B, L-1, V], "attn": [B, L-1, K], "targets": [B, L-1], ...}``;
* ``loss(outputs, batch) -> {"loss", "xe", ...}``: the training objective (scalar tensors).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CAPTION_MODELS", "CaptionModel", "State", "build_caption_model", "caption_model_config",
           "masked_mean", "replace_config"]

State = dict[str, torch.Tensor]
PAD = 0  # same as butd.datasets.vocab.PAD (models do not import the data package)


def masked_mean(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of feats [B, K, D] over the K positions where mask [B, K] is True -> [B, D]."""
    m = mask.to(feats.dtype).unsqueeze(-1)
    return (feats * m).sum(1) / m.sum(1).clamp_min(1.0)


def replace_config(config: Any, overrides: dict[str, Any] | None) -> Any:
    """Copy of a frozen config dataclass with ``overrides``; unknown keys raise ``ValueError``."""
    if not overrides:
        return config
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown {type(config).__name__} keys {unknown} (known: {sorted(names)})")
    return dataclasses.replace(config, **overrides)


class CaptionModel(nn.Module):
    """Base class: subclasses implement ``init_state`` and ``step_logits``; may extend ``loss``."""

    vocab_size: int

    def init_state(self, feats: torch.Tensor, mask: torch.Tensor) -> State:
        raise NotImplementedError

    def step_logits(self, tokens: torch.Tensor, state: State, feats: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, State, torch.Tensor, dict[str, torch.Tensor]]:
        """One step: (logits [B, V], new state, attention [B, K], extras {name: [B]})."""
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state: State, feats: torch.Tensor, mask: torch.Tensor
             ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """tokens [B] (previous word) -> (log-probabilities [B, V], new state, attention [B, K])."""
        logits, state, attn, _ = self.step_logits(tokens, state, feats, mask)
        return F.log_softmax(logits, dim=-1), state, attn

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Teacher forcing: logits [B, T, V], attn [B, T, K], targets [B, T], stacked extras [B, T]."""
        feats, mask, caps = batch["feats"], batch["mask"], batch["captions"]
        inputs, targets = caps[:, :-1], caps[:, 1:]
        state = self.init_state(feats, mask)
        logits, attns, extras = [], [], []
        for t in range(inputs.size(1)):
            lg, state, attn, ex = self.step_logits(inputs[:, t], state, feats, mask)
            logits.append(lg)
            attns.append(attn)
            extras.append(ex)
        out = {"logits": torch.stack(logits, 1), "attn": torch.stack(attns, 1), "targets": targets}
        for key in extras[0] if extras else ():
            out[key] = torch.stack([ex[key] for ex in extras], 1)
        return out

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Token-mean cross-entropy over non-PAD targets (``loss_weight`` = number of those targets)."""
        logits, targets = outputs["logits"], outputs["targets"]
        xe = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=PAD)
        # loss_weight: the token count, so that ranks of a distributed run weigh their token means correctly
        return {"loss": xe, "xe": xe.detach(), "loss_weight": (targets != PAD).sum()}


# ------------------------------------------------------------------------------------------ registry
Builder = Callable[[int, int, dict[str, Any] | None], CaptionModel]


def _updown(vocab_size: int, feature_dim: int, overrides: dict[str, Any] | None) -> CaptionModel:
    from butd.models.updown_caption import UpDownCaption, UpDownCaptionConfig

    return UpDownCaption(vocab_size, feature_dim, replace_config(UpDownCaptionConfig(), overrides))


def _sat_soft(vocab_size: int, feature_dim: int, overrides: dict[str, Any] | None) -> CaptionModel:
    from butd.models.sat import SatConfig, SatSoft

    return SatSoft(vocab_size, feature_dim, replace_config(SatConfig(), overrides))


def _sat_hard(vocab_size: int, feature_dim: int, overrides: dict[str, Any] | None) -> CaptionModel:
    from butd.models.sat_hard import SatHard, SatHardConfig

    return SatHard(vocab_size, feature_dim, replace_config(SatHardConfig(), overrides))


CAPTION_MODELS: dict[str, Builder] = {"updown": _updown, "sat-soft": _sat_soft, "sat-hard": _sat_hard}


def build_caption_model(name: str, vocab_size: int, feature_dim: int,
                        overrides: dict[str, Any] | None = None) -> CaptionModel:
    """Instantiate a registered caption model with its default config updated by ``overrides``."""
    if name not in CAPTION_MODELS:
        raise ValueError(f"unknown caption model {name!r} (known: {', '.join(CAPTION_MODELS)})")
    return CAPTION_MODELS[name](vocab_size, feature_dim, overrides)


def caption_model_config(model: CaptionModel) -> dict[str, Any]:
    """The model's config as a plain dict (for run configs / checkpoints)."""
    return dataclasses.asdict(model.config)  # type: ignore[arg-type]
