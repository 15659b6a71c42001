"""A newcomer's caption model in one file: a GRU decoder with additive attention (the test's dummy)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from butd.models.caption_base import CaptionModel, State, masked_mean


@dataclass(frozen=True)
class GruCaptionConfig:
    embed_dim: int = 32
    hidden_dim: int = 64
    att_dim: int = 32
    dropout: float = 0.0


class GruCaption(CaptionModel):
    def __init__(self, vocab_size: int, feature_dim: int, config: GruCaptionConfig = GruCaptionConfig()) -> None:
        super().__init__()
        self.config, self.vocab_size = config, vocab_size
        self.embed = nn.Embedding(vocab_size, config.embed_dim)
        self.init_h = nn.Linear(feature_dim, config.hidden_dim)
        self.att_feat = nn.Linear(feature_dim, config.att_dim)
        self.att_hid = nn.Linear(config.hidden_dim, config.att_dim)
        self.att_w = nn.Linear(config.att_dim, 1)
        self.cell = nn.GRUCell(config.embed_dim + feature_dim, config.hidden_dim)
        self.out = nn.Linear(config.hidden_dim, vocab_size)

    def init_state(self, feats: torch.Tensor, mask: torch.Tensor) -> State:
        return {"h": torch.tanh(self.init_h(masked_mean(feats, mask)))}

    def step_logits(self, tokens, state, feats, mask):
        e = self.att_w(torch.tanh(self.att_feat(feats) + self.att_hid(state["h"]).unsqueeze(1))).squeeze(-1)
        alpha = torch.softmax(e.masked_fill(~mask, float("-inf")), dim=-1)
        context = (alpha.unsqueeze(-1) * feats).sum(1)
        h = self.cell(torch.cat([self.embed(tokens), context], -1), state["h"])
        return self.out(h), {"h": h}, alpha, {}
