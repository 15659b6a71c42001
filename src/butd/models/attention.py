"""Shared pieces of the Up-Down models: the gated tanh layer and masked top-down attention."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GatedTanh", "TopDownAttention", "masked_softmax"]


class GatedTanh(nn.Module):
    """y = tanh(W x + b) * sigmoid(W' x + b'), computed with one fused linear map. [..., in] -> [..., out]."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.linear = nn.Linear(in_dim, 2 * out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.linear(x).split(self.out_dim, dim=-1)
        return torch.tanh(value) * torch.sigmoid(gate)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax of ``scores`` where ``mask`` is False gets exactly 0 weight (all-masked rows give 0s)."""
    if mask is None:
        return torch.softmax(scores, dim=dim)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=dim)
    return torch.nan_to_num(weights, nan=0.0)


class TopDownAttention(nn.Module):
    """Soft attention over K regions driven by a query: a_i = w_a^T f_a([v_i, q]); v_hat = sum_i alpha_i v_i.

    ``f_a`` is a gated tanh layer on the concatenation. Inputs: features [B, K, D], query [B, Q],
    mask bool [B, K] (True = real region). Returns (v_hat [B, D], alpha [B, K]).
    """

    def __init__(self, feature_dim: int, query_dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.f_a = GatedTanh(feature_dim + query_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.w_a = nn.Linear(hidden_dim, 1)

    def scores(self, features: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Unnormalised attention logits [B, K]."""
        q = query.unsqueeze(1).expand(-1, features.size(1), -1)
        return self.w_a(self.dropout(self.f_a(torch.cat([features, q], dim=-1)))).squeeze(-1)

    def forward(
        self, features: torch.Tensor, query: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = masked_softmax(self.scores(features, query), mask, dim=1)
        return torch.bmm(alpha.unsqueeze(1), features).squeeze(1), alpha
