"""Shared pieces of the Up-Down models: their non-linear layers and masked top-down attention.

Two layer forms, named in :data:`LAYERS` (``UpDownVQAConfig.layer``):

* ``gated_tanh`` (Anderson et al. 2018, eq. 9): y = tanh(W x + b) * sigmoid(W' x + b');
* ``relu_wn``: y = ReLU(W x + b) with W weight-normalised over the whole matrix (W = g V / ||V||, a scalar g),
  bottom-up-attention-vqa's ``FCNet`` (fc.py: ``weight_norm(nn.Linear, dim=None)`` then ReLU); in that form the
  scalar attention logit and the classifier's output layer are weight-normalised linears too
  (attention.py, classifier.py).

Two attention forms, named in :data:`ATTENTIONS` (``UpDownVQAConfig.attention``): ``concat``, the paper's
a_i = w_a^T f_a([v_i, q]), and ``product``, bottom-up-attention-vqa's ``NewAttention``:
a_i = w_a^T dropout(f_v(v_i) * f_q(q)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from butd.registry import Entry, Registry

__all__ = ["ATTENTIONS", "LAYERS", "GatedTanh", "ProductAttention", "ReluWeightNorm", "TopDownAttention",
           "masked_softmax", "output_linear"]


class GatedTanh(nn.Module):
    """y = tanh(W x + b) * sigmoid(W' x + b'), computed with one fused linear map. [..., in] -> [..., out]."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.linear = nn.Linear(in_dim, 2 * out_dim)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The non-linearity applied to ``self.linear``'s output."""
        value, gate = pre.split(self.out_dim, dim=-1)
        return torch.tanh(value) * torch.sigmoid(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.linear(x))


class ReluWeightNorm(nn.Module):
    """y = ReLU(W x + b), W = g V / ||V|| (one scalar g over the whole matrix). [..., in] -> [..., out]."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = weight_norm(nn.Linear(in_dim, out_dim), dim=None)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


# name -> Entry(None, layer class (in_dim, out_dim), doc, {"normed_output": output linears weight-normalised})
LAYERS = Registry("VQA layer", {
    "gated_tanh": Entry(None, GatedTanh, "gated tanh (Anderson et al. 2018)", {"normed_output": False}),
    "relu_wn": Entry(None, ReluWeightNorm, "ReLU over a weight-normalised linear (bottom-up-attention-vqa fc.py)",
                     {"normed_output": True}),
})


def output_linear(layer: str, in_dim: int, out_dim: int) -> nn.Module:
    """The plain linear map at the end of a block: weight-normalised (dim=None) in the ``relu_wn`` form."""
    linear = nn.Linear(in_dim, out_dim)
    return weight_norm(linear, dim=None) if LAYERS.entry(layer).info["normed_output"] else linear


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax of ``scores`` where ``mask`` is False gets exactly 0 weight (all-masked rows give 0s)."""
    if mask is None:
        return torch.softmax(scores, dim=dim)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=dim)
    return torch.nan_to_num(weights, nan=0.0)


class _Attention(nn.Module):
    """Soft attention over K regions driven by a query. Inputs: features [B, K, D], query [B, Q],
    mask bool [B, K] (True = real region). Returns (v_hat [B, D], alpha [B, K])."""

    def scores(self, features: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, features: torch.Tensor, query: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = masked_softmax(self.scores(features, query), mask, dim=1)
        return torch.bmm(alpha.unsqueeze(1), features).squeeze(1), alpha


class TopDownAttention(_Attention):
    """a_i = w_a^T f_a([v_i, q]); v_hat = sum_i alpha_i v_i (the paper's form).

    f_a's linear map on [v_i, q] is applied as W_v v_i + W_q q: the query's share is computed once per
    question, not once per region, and the concatenation is never built (equal up to float rounding).
    """

    def __init__(self, feature_dim: int, query_dim: int, hidden_dim: int, dropout: float = 0.0,
                 layer: str = "gated_tanh") -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.f_a = LAYERS.builder(layer)(feature_dim + query_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.w_a = output_linear(layer, hidden_dim, 1)

    def scores(self, features: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Unnormalised attention logits [B, K]."""
        linear = self.f_a.linear
        w_v, w_q = linear.weight.split([self.feature_dim, query.size(-1)], dim=1)
        pre = F.linear(features, w_v, linear.bias) + F.linear(query, w_q).unsqueeze(1)
        return self.w_a(self.dropout(self.f_a.activate(pre))).squeeze(-1)


class ProductAttention(_Attention):
    """a_i = w_a^T dropout(f_v(v_i) * f_q(q)) (bottom-up-attention-vqa attention.py ``NewAttention``)."""

    def __init__(self, feature_dim: int, query_dim: int, hidden_dim: int, dropout: float = 0.0,
                 layer: str = "gated_tanh") -> None:
        super().__init__()
        build = LAYERS.builder(layer)
        self.f_v, self.f_q = build(feature_dim, hidden_dim), build(query_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.w_a = output_linear(layer, hidden_dim, 1)

    def scores(self, features: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        joint = self.f_v(features) * self.f_q(query).unsqueeze(1)  # broadcast over regions, never repeated
        return self.w_a(self.dropout(joint)).squeeze(-1)


# name -> Entry(None, class (feature_dim, query_dim, hidden_dim, dropout, layer), doc)
ATTENTIONS = Registry("VQA attention", {
    "concat": Entry(None, TopDownAttention, "a_i = w_a^T f_a([v_i, q]) (Anderson et al. 2018)"),
    "product": Entry(None, ProductAttention,
                     "a_i = w_a^T (f_v(v_i) * f_q(q)) (bottom-up-attention-vqa NewAttention)"),
})
