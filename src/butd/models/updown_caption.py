"""Up-Down captioner (Anderson et al., 2018, section 3.2): a top-down attention LSTM and a language LSTM.

Per step t with features v_i [D] (regions or grid cells, masked), mean feature v_bar and word Pi_t:

    h1_t = LSTM_att([h2_{t-1}, v_bar, W_e Pi_t], h1_{t-1})
    a_it = w_a^T tanh(W_va v_i + W_ha h1_t),   alpha_t = softmax_i(a_t)    (masked positions get 0)
    v_hat_t = sum_i alpha_it v_i
    h2_t = LSTM_lang([v_hat_t, h1_t], h2_{t-1})
    p(y_t) = softmax(W_p h2_t + b_p)

Defaults follow the paper: 1000-unit LSTMs and embeddings, 512-unit attention.

What does not change over a caption is computed once per image in ``init_state``: the projections W_va v_i
and the attention LSTM's input gates of v_bar (its largest input block, with both biases), so a step
multiplies only [h2, W_e Pi, h1] (the same parameters as ``nn.LSTMCell``; equal up to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
        """Zero LSTM states h1, c1, h2, c2 [B, H]; att_feats [B, K, A] = W_va v_i; v_gates [B, 4H] = the
        attention LSTM's W_ih v_bar + b_ih + b_hh; att_weight (shared by every row): its weights for
        [h2, W_e Pi, h1] as one [4H, 2H + E] matrix (made once per call, not per step)."""
        h, lstm = self.config.hidden_dim, self.att_lstm
        w_h, w_v, w_e = lstm.weight_ih.split([h, self.feature_dim, self.config.embed_dim], dim=1)
        zeros = feats.new_zeros(feats.size(0), h)
        v_gates = F.linear(masked_mean(feats, mask), w_v, lstm.bias_ih + lstm.bias_hh)
        return {"h1": zeros, "c1": zeros, "h2": zeros, "c2": zeros, "att_feats": self.w_va(feats),
                "v_gates": v_gates, "att_weight": (torch.cat([w_h, w_e, lstm.weight_hh], dim=1),)}

    def embed_words(self, words: torch.Tensor) -> torch.Tensor:
        return self.embed(words)

    def step_logits(self, tokens: torch.Tensor, state: State, feats: torch.Tensor, mask: torch.Tensor,
                    emb: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, State, torch.Tensor, dict[str, torch.Tensor]]:
        emb = self.embed(tokens) if emb is None else emb
        x1 = torch.cat([state["h2"], emb, state["h1"]], dim=-1)
        gates = torch.addmm(state["v_gates"], x1, state["att_weight"][0].t())  # nn.LSTMCell's gates
        h1, c1 = _lstm_update(gates, state["c1"])
        scores = self.w_a(torch.tanh(state["att_feats"] + self.w_ha(h1).unsqueeze(1))).squeeze(-1)
        alpha = masked_softmax(scores, mask, dim=1)  # [B, K]
        v_hat = torch.bmm(alpha.unsqueeze(1), feats).squeeze(1)
        h2, c2 = self.lang_lstm(torch.cat([v_hat, h1], dim=-1), (state["h2"], state["c2"]))
        logits = self.w_p(self.drop(h2))
        return logits, {**state, "h1": h1, "c1": c1, "h2": h2, "c2": c2}, alpha, {}


def _lstm_update(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.LSTMCell``'s update from its gate pre-activations [B, 4H] (order i, f, g, o) -> (h, c) [B, H]."""
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c
