"""Up-Down VQA model (Anderson et al., CVPR 2018, sec. 3.3): GRU question encoder, top-down attention
over bottom-up region features, gated tanh fusion and a sigmoid multi-label classifier over answers.

    q = GRU(words)                      a_i = w_a^T f_a([v_i, q]), alpha = softmax(a) over real regions
    v_hat = sum_i alpha_i v_i           h = f_q(q) * f_v(v_hat)          p = sigmoid(W_o f_o(h))

Every f_* is a gated tanh layer; the loss is binary cross-entropy against soft scores.

``layer: relu_wn`` with ``attention: product`` is hengyuan-hu/bottom-up-attention-vqa's model
(base_model.py ``build_baseline0_newatt``): ReLU + weight-normalised layers (fc.py ``FCNet``), attention from the
product of projections (attention.py ``NewAttention``), a weight-normalised classifier (classifier.py
``SimpleClassifier``, its own dropout). See butd.models.attention and RECIPES.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from butd.models.attention import ATTENTIONS, LAYERS, output_linear

__all__ = ["UpDownVQA", "UpDownVQAConfig", "load_glove", "vqa_loss"]


@dataclass(frozen=True)
class UpDownVQAConfig:
    """Sizes follow the paper's VQA model: 300-d words, 512-d GRU and gated tanh layers."""

    word_dim: int = 300
    hidden_dim: int = 512  # GRU state
    attention_dim: int = 512  # f_a
    joint_dim: int = 512  # f_q, f_v
    classifier_dim: int = 512  # f_o
    dropout: float = 0.0  # after the attention's joint layer, and before W_o unless classifier_dropout is set
    freeze_embeddings: bool = False
    layer: str = "gated_tanh"  # every f_*: a key of butd.models.attention.LAYERS (relu_wn: bottom-up-attention-vqa)
    attention: str = "concat"  # a key of butd.models.attention.ATTENTIONS (product: bottom-up-attention-vqa)
    classifier_dropout: float | None = None  # before W_o (None: dropout); classifier.py uses 0.5


def load_glove(path: str | Path, words: Sequence[str], dim: int = 300, seed: int = 0) -> torch.Tensor:
    """Embedding matrix [len(words), dim] from a GloVe text file; unseen words N(0, 0.1^2), row 0 zeros."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(len(words), dim, generator=gen) * 0.1
    index = {w: i for i, w in enumerate(words)}
    found = 0
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            word, _, rest = line.rstrip("\n").partition(" ")
            i = index.get(word)
            if i is None:
                continue
            values = rest.split(" ")
            if len(values) != dim:
                raise ValueError(f"{path}:{line_no}: {len(values)} values for {word!r}, expected {dim}")
            table[i] = torch.tensor([float(v) for v in values])
            found += 1
    if found == 0:
        raise ValueError(f"{path}: no question word found in the GloVe file")
    table[0] = 0.0
    return table


def vqa_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE with soft targets, summed over answers and averaged over the batch. [B, A], [B, A] -> []."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / logits.size(0)


class UpDownVQA(nn.Module):
    """Batch keys: tokens int64 [B, L] (0 = pad), features [B, K, D], mask bool [B, K] (optional)."""

    def __init__(
        self,
        vocab_size: int,
        num_answers: int,
        feature_dim: int,
        config: UpDownVQAConfig = UpDownVQAConfig(),
        embeddings: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(vocab_size, config.word_dim, padding_idx=0)
        if embeddings is not None:
            if tuple(embeddings.shape) != (vocab_size, config.word_dim):
                raise ValueError(f"embeddings {tuple(embeddings.shape)} != ({vocab_size}, {config.word_dim})")
            self.embed.weight.data.copy_(embeddings)
        self.embed.weight.requires_grad_(not config.freeze_embeddings)
        self.gru = nn.GRU(config.word_dim, config.hidden_dim, batch_first=True)
        layer = LAYERS.builder(config.layer)
        self.attention = ATTENTIONS.builder(config.attention)(
            feature_dim, config.hidden_dim, config.attention_dim, config.dropout, config.layer
        )
        self.f_q = layer(config.hidden_dim, config.joint_dim)
        self.f_v = layer(feature_dim, config.joint_dim)
        self.f_o = layer(config.joint_dim, config.classifier_dim)
        drop = config.dropout if config.classifier_dropout is None else config.classifier_dropout
        self.dropout = nn.Dropout(drop)
        self.w_o = output_linear(config.layer, config.classifier_dim, num_answers)

    @torch.no_grad()
    def init_answer_bias(self, prior: torch.Tensor) -> None:
        """Start the output bias at the log-odds of each answer's mean soft score [A] (no slow warm-up
        phase in which the whole network bends itself to reproduce the answer prior)."""
        p = prior.to(self.w_o.bias).clamp(1e-4, 1 - 1e-4)
        self.w_o.bias.copy_(torch.log(p) - torch.log1p(-p))

    def encode_question(self, tokens: torch.Tensor) -> torch.Tensor:
        """GRU state after each question's last real token. [B, L] -> [B, H]."""
        outputs, _ = self.gru(self.embed(tokens))
        last = (tokens != 0).sum(dim=1).clamp(min=1) - 1
        return outputs[torch.arange(tokens.size(0), device=tokens.device), last]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"logits": [B, A], "attention": [B, K]}."""
        q = self.encode_question(batch["tokens"])
        v_hat, alpha = self.attention(batch["features"], q, batch.get("mask"))
        h = self.f_q(q) * self.f_v(v_hat)
        return {"logits": self.w_o(self.dropout(self.f_o(h))), "attention": alpha}

    @torch.no_grad()
    def answer(self, batch: dict[str, torch.Tensor], answers: Sequence[str], k: int = 5) -> list[dict]:
        """Top-k answers per question with sigmoid scores and the attention weights over real regions."""
        was_training = self.training
        self.eval()
        out = self.forward(batch)
        self.train(was_training)
        probs = torch.sigmoid(out["logits"])
        top = probs.topk(min(k, probs.size(1)), dim=1)
        mask = batch.get("mask")
        results = []
        for b in range(probs.size(0)):
            n = int(mask[b].sum()) if mask is not None else out["attention"].size(1)
            item = {
                "answers": [answers[int(j)] for j in top.indices[b]],
                "scores": [float(s) for s in top.values[b]],
                "attention": out["attention"][b, :n].tolist(),
            }
            if "question_id" in batch:
                item["question_id"] = int(batch["question_id"][b])
            results.append(item)
        return results
