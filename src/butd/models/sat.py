"""Show, Attend and Tell (Xu et al., 2015), soft ("deterministic") attention, over regions or grid cells.

Per step t with annotations a_i [D] (i over the K unmasked positions) and previous word y_{t-1}:

    e_ti = w^T tanh(W_a a_i + W_h h_{t-1}),  alpha_t = softmax_i(e_t)          (masked positions get 0)
    z_t  = beta_t * sum_i alpha_ti a_i,      beta_t = sigmoid(f_beta(h_{t-1}))  ("selector" gate)
    h_t, c_t = LSTM([E y_{t-1}, z_t], (h_{t-1}, c_{t-1}))
    p(y_t) ∝ exp(L_o(E y_{t-1} + L_h h_t + L_z z_t))                             (deep output)

h_0, c_0 are one-layer tanh MLPs of the masked mean annotation. The paper's per-sentence objective is

    -log p(y | a) + lambda * sum_i (1 - sum_t alpha_ti)^2           (i over real positions, t over caption steps)

Our cross-entropy is a token mean, i.e. the summed -log p divided by the mean caption length, so the
regulariser is divided by the same length: the whole per-sentence objective scaled by one constant. lambda = 1
is the value arctic-captions' COCO script (evaluate_coco.py) passes (see RECIPES.md for its own scaling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from butd.models.attention import masked_softmax
from butd.models.caption_base import PAD, CaptionModel, State, caption_rows, masked_mean

__all__ = ["SatConfig", "SatSoft", "doubly_stochastic_penalty"]


@dataclass(frozen=True)
class SatConfig:
    """Sizes and loss weights of Show-Attend-Tell."""

    embed_dim: int = 512  # m: word embedding and deep-output width
    hidden_dim: int = 1000  # n: LSTM width
    att_dim: int = 512  # attention MLP width
    dropout: float = 0.5
    selector: bool = True  # the gating scalar beta
    alpha_c: float = 1.0  # lambda of the per-sentence doubly stochastic regulariser (0 = off)


def doubly_stochastic_penalty(attn: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sentence sum_i (1 - sum_t alpha_ti)^2, averaged over the batch, divided by the mean caption length
    (so that it adds to a token-mean cross-entropy with the paper's per-sentence weight).

    attn [B, T, K], targets [B, T] (PAD steps ignored), mask [B, K] (padding positions ignored) -> scalar.
    """
    valid = (targets != PAD).to(attn.dtype)
    total = (attn * valid.unsqueeze(-1)).sum(1)  # [B, K]
    per_sentence = (((1.0 - total) ** 2) * mask.to(attn.dtype)).sum(1)  # [B]
    return per_sentence.mean() / valid.sum(1).mean().clamp_min(1.0)


class SatSoft(CaptionModel):
    """Soft-attention Show-Attend-Tell captioner. Features [B, K, D] with mask [B, K]."""

    def __init__(self, vocab_size: int, feature_dim: int, config: SatConfig = SatConfig()) -> None:
        super().__init__()
        self.config, self.vocab_size, self.feature_dim = config, vocab_size, feature_dim
        e, h, a, d = config.embed_dim, config.hidden_dim, config.att_dim, feature_dim
        self.embed = nn.Embedding(vocab_size, e, padding_idx=PAD)
        self.init_h = nn.Sequential(nn.Linear(d, h), nn.Tanh())
        self.init_c = nn.Sequential(nn.Linear(d, h), nn.Tanh())
        self.att_feat = nn.Linear(d, a)  # W_a
        self.att_hid = nn.Linear(h, a, bias=False)  # W_h
        self.att_w = nn.Linear(a, 1)  # w
        self.f_beta = nn.Linear(h, 1)
        self.lstm = nn.LSTMCell(e + d, h)
        self.out_h = nn.Linear(h, e)  # L_h
        self.out_z = nn.Linear(d, e, bias=False)  # L_z
        self.out_o = nn.Linear(e, vocab_size)  # L_o
        self.drop = nn.Dropout(config.dropout)

    @property
    def has_unused_parameters(self) -> bool:
        """f_beta exists but takes no part without the selector (DDP must then look for unused parameters)."""
        return not self.config.selector

    def init_state(self, feats: torch.Tensor, mask: torch.Tensor) -> State:
        """h, c [B, H] from the masked mean annotation; att_feats [B, K, A] = W_a a_i (cached)."""
        mean = masked_mean(feats, mask)
        return {"h": self.init_h(mean), "c": self.init_c(mean), "att_feats": self.att_feat(feats)}

    def attention(self, h_prev: torch.Tensor, state: State, mask: torch.Tensor) -> torch.Tensor:
        """alpha [B, K] from h_{t-1} [B, H]."""
        e = self.att_w(torch.tanh(state["att_feats"] + self.att_hid(h_prev).unsqueeze(1))).squeeze(-1)
        return masked_softmax(e, mask, dim=1)

    def gate(self, z: torch.Tensor, h_prev: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """beta * z for a context z [B, D] (the selector); extras {"beta": [B]} when gated."""
        if not self.config.selector:
            return z, {}
        beta = torch.sigmoid(self.f_beta(h_prev))
        return beta * z, {"beta": beta.squeeze(-1)}

    def context(self, alpha: torch.Tensor, feats: torch.Tensor, state: State
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Soft context z_t [B, D] = beta * sum_i alpha_i a_i (beta from h_{t-1} = state["h"])."""
        return self.gate(torch.bmm(alpha.unsqueeze(1), feats).squeeze(1), state["h"])

    def embed_words(self, words: torch.Tensor) -> torch.Tensor:
        return self.embed(words)

    def step_logits(self, tokens: torch.Tensor, state: State, feats: torch.Tensor, mask: torch.Tensor,
                    emb: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, State, torch.Tensor, dict[str, torch.Tensor]]:
        emb = self.embed(tokens) if emb is None else emb  # [B, E]
        alpha = self.attention(state["h"], state, mask)
        z, extras = self.context(alpha, feats, state)
        h, c = self.lstm(torch.cat([emb, z], dim=-1), (state["h"], state["c"]))
        logits = self.out_o(self.drop(emb + self.out_h(h) + self.out_z(z)))
        return logits, {**state, "h": h, "c": c}, alpha, extras

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """XE + alpha_c * doubly stochastic penalty."""
        out = super().loss(outputs, batch)
        if self.config.alpha_c > 0:
            reg = doubly_stochastic_penalty(outputs["attn"], outputs["targets"], caption_rows(batch, batch["mask"]))
            out["loss"] = out["loss"] + self.config.alpha_c * reg
            out["attn_reg"] = reg.detach()
        return out
