"""Up-Down captioner (Anderson et al., 2018, section 3.2): a top-down attention LSTM and a language LSTM.

Per step t with features v_i [D] (regions or grid cells, masked), mean feature v_bar and word Pi_t:

    h1_t = LSTM_att([h2_{t-1}, v_bar, W_e Pi_t], h1_{t-1})
    a_it = w_a^T tanh(W_va v_i + W_ha h1_t),   alpha_t = softmax_i(a_t)    (masked positions get 0)
    v_hat_t = sum_i alpha_it v_i
    h2_t = LSTM_lang([v_hat_t, h1_t], h2_{t-1})
    p(y_t) = softmax(W_p h2_t + b_p)

Defaults follow the paper: 1000-unit LSTMs and embeddings, 512-unit attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from butd.models.attention import masked_softmax
from butd.models.caption_base import PAD, CaptionModel, State, masked_mean

__all__ = ["UpDownCaption", "UpDownCaptionConfig"]


@dataclass(frozen=True)
class UpDownCaptionConfig:
    """Sizes of the Up-Down captioner."""

    embed_dim: int = 1000
    hidden_dim: int = 1000
    att_dim: int = 512
    dropout: float = 0.5  # on h2 before the output layer


class UpDownCaption(CaptionModel):
    """Two-LSTM top-down captioner. Features [B, K, D] with mask [B, K]."""

    def __init__(self, vocab_size: int, feature_dim: int,
                 config: UpDownCaptionConfig = UpDownCaptionConfig()) -> None:
        super().__init__()
        self.config, self.vocab_size, self.feature_dim = config, vocab_size, feature_dim
        e, h, a, d = config.embed_dim, config.hidden_dim, config.att_dim, feature_dim
        self.embed = nn.Embedding(vocab_size, e, padding_idx=PAD)  # W_e
        self.att_lstm = nn.LSTMCell(h + d + e, h)
        self.lang_lstm = nn.LSTMCell(d + h, h)
        self.w_va = nn.Linear(d, a, bias=False)
        self.w_ha = nn.Linear(h, a)
        self.w_a = nn.Linear(a, 1)
        self.w_p = nn.Linear(h, vocab_size)
        self.drop = nn.Dropout(config.dropout)

    def init_state(self, feats: torch.Tensor, mask: torch.Tensor) -> State:
        """Zero LSTM states h1, c1, h2, c2 [B, H]; v_bar [B, D]; att_feats [B, K, A] = W_va v_i (cached)."""
        b, h = feats.size(0), self.config.hidden_dim
        zeros = feats.new_zeros(b, h)
        return {"h1": zeros, "c1": zeros, "h2": zeros, "c2": zeros, "v_bar": masked_mean(feats, mask),
                "att_feats": self.w_va(feats)}

    def step_logits(self, tokens: torch.Tensor, state: State, feats: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, State, torch.Tensor, dict[str, torch.Tensor]]:
        x1 = torch.cat([state["h2"], state["v_bar"], self.embed(tokens)], dim=-1)
        h1, c1 = self.att_lstm(x1, (state["h1"], state["c1"]))
        scores = self.w_a(torch.tanh(state["att_feats"] + self.w_ha(h1).unsqueeze(1))).squeeze(-1)
        alpha = masked_softmax(scores, mask, dim=1)  # [B, K]
        v_hat = torch.bmm(alpha.unsqueeze(1), feats).squeeze(1)
        h2, c2 = self.lang_lstm(torch.cat([v_hat, h1], dim=-1), (state["h2"], state["c2"]))
        logits = self.w_p(self.drop(h2))
        new = {"h1": h1, "c1": c1, "h2": h2, "c2": c2, "v_bar": state["v_bar"],
               "att_feats": state["att_feats"]}
        return logits, new, alpha, {}
