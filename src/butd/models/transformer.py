"""Transformer captioner (Vaswani et al. 2017) over regions or grid cells, built as self-critical.pytorch builds it.

Facts from ruotianluo/self-critical.pytorch @ 4c48a33, ``captioning/models/TransformerModel.py`` (no code taken):

* features -> Linear(D, d_model), ReLU, Dropout(``feat_dropout``) (its ``att_embed``, whose dropout is
  ``drop_prob_lm``, 0.5 by default in ``opts.py``); no positional encoding on the feature side (a set of regions);
* encoder: ``enc_layers`` **pre-norm** layers ``x + Drop(SelfAttn(LN(x)))``, ``x + Drop(FFN(LN(x)))`` (its
  ``SublayerConnection`` normalises first), then a final LayerNorm;
* decoder: word embedding x sqrt(d_model) + sinusoidal positions, Dropout; ``dec_layers`` pre-norm layers (causal
  self-attention, cross-attention over the memory, FFN); final LayerNorm; Linear to the vocabulary;
* attention: ``heads`` heads, dropout on the attention weights; FFN ``W2 Drop(ReLU(W1 x))``;
* Xavier-uniform init of every matrix of the encoder-decoder (the feature embedding keeps torch's init).

One difference: ``nn.LayerNorm`` (eps 1e-6 inside the square root) where the reference divides by the unbiased
std + 1e-6. The reference's decoder also hides EOS/PAD input positions from self-attention; under the causal mask
no target that counts ever sees them, so butd does not.

``attn`` (what ``butd report`` / ``butd caption`` draw) is the cross-attention of decoder layer ``attn_layer``
(-1 = the last) averaged over the heads (``attn_head`` -1), or one head's. Weights before attention dropout.

Decoding is incremental: ``init_state`` runs the encoder once and projects the memory into each decoder layer's
cross-attention keys/values (``ck{i}``, ``cv{i}`` [B, H, K, d_k]); ``step_logits`` runs one position through the
decoder, appending its self-attention keys/values to ``k{i}``, ``v{i}`` [B, H, t, d_k] (batch-first, so the
decoders reorder them with ``index_select(0, ...)``).

Box geometry (``geometry: true``, off by default; region stores with ``data.boxes: true``, which appends each
box x1/W y1/H x2/W y2/H as 4 feature columns): the object relation transformer (Herdade et al., NeurIPS 2019;
yahoo/object_relation_transformer @ 9f28357, ``models/RelationTransformerModel.py`` ``box_attention``,
``misc/utils.py`` ``BoxRelationalEmbedding``): every encoder self-attention adds ``log max(ReLU(W_G e_mn), 1e-6)``
per head to its scores, e_mn the sinusoidal embedding (``geometry_dim`` 64, wave length 1000, x100) of
(log max(|cx_m - cx_n| / w_m, 1e-3), log max(|cy_m - cy_n| / h_m, 1e-3), log w_m / w_n, log h_m / h_n), with
w = x2 - x1 + 1 and h = y2 - y1 + 1 as ORT computes them from its [0, 1] boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from butd.errors import UserError
from butd.models.attention import masked_softmax
from butd.models.caption_base import CaptionModel, Feed, State

__all__ = ["BOX_COLUMNS", "TransformerCaption", "TransformerConfig", "box_relations", "sinusoid"]

BOX_COLUMNS = 4  # x1/W, y1/H, x2/W, y2/H after the D feature columns (data.boxes)
KV = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of the Transformer captioner (defaults: self-critical ``configs/transformer/transformer.yml``)."""

    d_model: int = 512
    d_ff: int = 2048
    heads: int = 8  # num_att_heads
    enc_layers: int = 6  # N_enc
    dec_layers: int = 6  # N_dec
    dropout: float = 0.1  # residual, attention-weight, FFN and embedding dropout
    feat_dropout: float = 0.5  # after the feature embedding (drop_prob_lm, opts.py default)
    attn_layer: int = -1  # decoder layer whose cross-attention is exposed as attn (-1 = last)
    attn_head: int = -1  # -1 = mean over heads, else that head
    geometry: bool = False  # ORT box-relation weights in the encoder (needs data.boxes: true)
    geometry_dim: int = 64  # d_g of the relation embedding (ORT dim_g)
    geometry_wave: float = 1000.0  # ORT wave_len


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Positions [T] -> encodings [T, dim]: sin(p / 10000^(2i/dim)) at column 2i, cos at 2i + 1 (Vaswani 3.5)."""
    freq = torch.exp(torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
                     * (-math.log(10000.0) / dim))
    angles = positions.to(torch.float32)[:, None] * freq
    return torch.stack([angles.sin(), angles.cos()], -1).flatten(1)[:, :dim]


def box_relations(boxes: torch.Tensor, dim: int = 64, wave: float = 1000.0) -> torch.Tensor:
    """ORT's relative geometry of every box pair: boxes [B, K, 4] (x1 y1 x2 y2 in [0, 1]) -> [B, K, K, dim].

    Row m, column n embeds (log max(|dcx| / w_m, 1e-3), log max(|dcy| / h_m, 1e-3), log w_m / w_n,
    log h_m / h_n); each of the 4, x100, at dim/8 frequencies wave^(-j / (dim/8)); all sines, then all cosines.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1 + 1.0, y2 - y1 + 1.0
    dx = ((cx[:, :, None] - cx[:, None, :]).abs() / w[:, :, None]).clamp_min(1e-3).log()
    dy = ((cy[:, :, None] - cy[:, None, :]).abs() / h[:, :, None]).clamp_min(1e-3).log()
    dw = (w[:, :, None] / w[:, None, :]).log()
    dh = (h[:, :, None] / h[:, None, :]).log()
    n = dim // 8
    freq = wave ** (-torch.arange(n, device=boxes.device, dtype=boxes.dtype) / n)
    angles = (100.0 * torch.stack([dx, dy, dw, dh], -1))[..., None] * freq  # [B, K, K, 4, n]
    angles = angles.flatten(-2)
    return torch.cat([angles.sin(), angles.cos()], -1)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention of ``heads`` heads with its own masking and key/value caching."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.h, self.dk = heads, d_model // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, d] -> [B, H, T, d_k]
        return x.view(x.size(0), x.size(1), self.h, self.dk).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> KV:
        """Keys and values of x [B, S, d], each [B, H, S, d_k] (computed once per memory / cached per step)."""
        return self._split(self.k(x)), self._split(self.v(x))

    def forward(self, x: torch.Tensor, kv: KV, mask: torch.Tensor | None, bias: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries x [B, T, d] over kv; mask bool broadcast to [B, H, T, S] (True = may attend); bias
        [B, H, T, S] added to the scores -> (output [B, T, d], weights [B, H, T, S])."""
        scores = self._split(self.q(x)) @ kv[0].transpose(-2, -1) / math.sqrt(self.dk)
        if bias is not None:
            scores = scores + bias
        weights = masked_softmax(scores, mask)  # masked keys get exactly 0
        out = (self.drop(weights) @ kv[1]).transpose(1, 2).reshape(x.size(0), x.size(1), -1)
        return self.o(out), weights


def _ffn(cfg: TransformerConfig) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.ReLU(), nn.Dropout(cfg.dropout),
                         nn.Linear(cfg.d_ff, cfg.d_model))


def _norm(cfg: TransformerConfig) -> nn.LayerNorm:
    return nn.LayerNorm(cfg.d_model, eps=1e-6)


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + FFN; with geometry, per-head box-relation log-weights on the scores (ORT)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = _norm(cfg), _norm(cfg)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.ff, self.drop = _ffn(cfg), nn.Dropout(cfg.dropout)
        self.geo = nn.Linear(cfg.geometry_dim, cfg.heads) if cfg.geometry else None  # ORT's W_G, one per head

    def forward(self, x: torch.Tensor, mask: torch.Tensor, relations: torch.Tensor | None) -> torch.Tensor:
        bias = None
        if self.geo is not None and relations is not None:
            bias = F.relu(self.geo(relations)).clamp_min(1e-6).log().permute(0, 3, 1, 2)  # [B, H, K, K]
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, self.attn.keys_values(h), mask, bias)[0])
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention (keys/values of earlier positions may come cached), cross-attention, FFN."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = _norm(cfg), _norm(cfg), _norm(cfg)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.cross = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.ff, self.drop = _ffn(cfg), nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, past: KV | None, memory: KV, memory_mask: torch.Tensor,
                causal: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, KV]:
        """x [B, T, d] (new positions), past keys/values [B, H, t0, d_k] or None, memory keys/values,
        memory_mask [B, 1, 1, K], causal [T, t0 + T] or None -> (x, cross weights [B, H, T, K], keys/values of
        all t0 + T positions)."""
        h = self.norm1(x)
        k, v = self.self_attn.keys_values(h)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        x = x + self.drop(self.self_attn(h, (k, v), causal)[0])
        out, weights = self.cross(self.norm2(x), memory, memory_mask)
        x = x + self.drop(out)
        return x + self.drop(self.ff(self.norm3(x))), weights, (k, v)


def _check(cfg: TransformerConfig) -> None:
    def bad(what: str, todo: str) -> None:
        raise UserError(what, "model", todo, usage=True)

    if cfg.heads < 1 or cfg.d_model % cfg.heads:
        bad(f"d_model {cfg.d_model} is not a multiple of heads {cfg.heads}", "set d_model to a multiple of heads")
    if cfg.enc_layers < 1 or cfg.dec_layers < 1:
        bad("the transformer needs at least one encoder and one decoder layer", "set enc_layers, dec_layers >= 1")
    if not -cfg.dec_layers <= cfg.attn_layer < cfg.dec_layers:
        bad(f"attn_layer {cfg.attn_layer} is not a decoder layer", f"use -1 or 0..{cfg.dec_layers - 1}")
    if not -1 <= cfg.attn_head < cfg.heads:
        bad(f"attn_head {cfg.attn_head} is not a head", f"use -1 (mean) or 0..{cfg.heads - 1}")
    if cfg.geometry and (cfg.geometry_dim < 8 or cfg.geometry_dim % 8):
        bad(f"geometry_dim {cfg.geometry_dim} is not a positive multiple of 8", "use 64 (ORT)")


class TransformerCaption(CaptionModel):
    """Encoder-decoder Transformer captioner. Features [B, K, D] (+4 box columns with geometry), mask [B, K]."""

    def __init__(self, vocab_size: int, feature_dim: int, config: TransformerConfig = TransformerConfig()) -> None:
        super().__init__()
        _check(config)
        self.config, self.vocab_size, self.feature_dim = config, vocab_size, feature_dim
        d = config.d_model
        self.att_embed = nn.Sequential(nn.Linear(feature_dim, d), nn.ReLU(), nn.Dropout(config.feat_dropout))
        self.encoder = nn.ModuleList(EncoderLayer(config) for _ in range(config.enc_layers))
        self.enc_norm = _norm(config)
        self.embed = nn.Embedding(vocab_size, d)
        self.embed_drop = nn.Dropout(config.dropout)
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.dec_layers))
        self.dec_norm = _norm(config)
        self.out = nn.Linear(d, vocab_size)
        for name, p in self.named_parameters():
            if p.dim() > 1 and not name.startswith("att_embed."):
                nn.init.xavier_uniform_(p)

    # ------------------------------------------------------------------ encoder
    def _columns(self, feats: torch.Tensor) -> None:
        want = self.feature_dim + (BOX_COLUMNS if self.config.geometry else 0)
        if feats.size(-1) == want:
            return
        if self.config.geometry and feats.size(-1) == self.feature_dim:
            raise UserError("model.geometry needs the region boxes in the features", "data.boxes",
                            "set data.boxes: true (region stores only)", usage=True)
        if feats.size(-1) == self.feature_dim + BOX_COLUMNS:
            raise UserError("the features carry box columns (data.boxes) but model.geometry is off", "model",
                            "set model.geometry: true or data.boxes: false", usage=True)
        raise UserError(f"features have {feats.size(-1)} columns, the model takes {want}", "features",
                        "use the feature store the model was trained on", usage=True)

    def encode(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Memory [B, K, d_model] of feats [B, K, D (+4)] with mask [B, K]; padded rows cannot leak anywhere."""
        self._columns(feats)
        feats = feats.masked_fill(~mask.unsqueeze(-1), 0.0)  # padding content never matters (nor NaNs)
        x = self.att_embed(feats[..., : self.feature_dim])
        relations = None
        if self.config.geometry:
            relations = box_relations(feats[..., self.feature_dim:], self.config.geometry_dim,
                                      self.config.geometry_wave)
        keys = mask[:, None, None, :]
        for layer in self.encoder:
            x = layer(x, keys, relations)
        return self.enc_norm(x)

    # ------------------------------------------------------------------ decoder
    def _embed_words(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """tokens [B, T] at positions start .. start + T - 1 -> [B, T, d_model]."""
        pos = torch.arange(start, start + tokens.size(1), device=tokens.device)
        scale = math.sqrt(self.config.d_model)
        return self.embed_drop(self.embed(tokens) * scale + sinusoid(pos, self.config.d_model))

    def _decode(self, x: torch.Tensor, past: list[KV] | None, memory: list[KV], memory_mask: torch.Tensor,
                causal: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, list[KV]]:
        """-> (logits [B, T, V], exposed attention [B, T, K], every layer's self-attention keys/values)."""
        weights, cache = [], []
        keys = memory_mask[:, None, None, :]
        for i, layer in enumerate(self.decoder):
            x, w, kv = layer(x, past[i] if past is not None else None, memory[i], keys, causal)
            weights.append(w)
            cache.append(kv)
        w = weights[self.config.attn_layer]
        attn = w.mean(1) if self.config.attn_head < 0 else w[:, self.config.attn_head]
        return self.out(self.dec_norm(x)), attn, cache

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Teacher forcing in one parallel pass (causal mask): logits [B, T, V], attn [B, T, K], targets [B, T].

        ``batch["image_index"]`` (optional, [B_cap]): features / mask hold one row per image; the memory is
        computed once per image and expanded to the caption rows."""
        mask, caps = batch["mask"], batch["captions"]
        memory = self.encode(batch["features"], mask)
        if "image_index" in batch:
            memory, mask = memory.index_select(0, batch["image_index"]), mask.index_select(0, batch["image_index"])
        inputs, targets = caps[:, :-1], caps[:, 1:]
        t = inputs.size(1)
        causal = torch.ones(t, t, dtype=torch.bool, device=caps.device).tril()
        kv = [layer.cross.keys_values(memory) for layer in self.decoder]
        logits, attn, _ = self._decode(self._embed_words(inputs, 0), None, kv, mask, causal)
        return {"logits": logits, "attn": attn, "targets": targets}

    def unroll(self, batch: dict[str, Any], feed: Feed | None = None) -> dict[str, torch.Tensor]:
        """The parallel pass, or (with a ``feed`` hook: scheduled sampling) the step loop of the base class."""
        if feed is None:
            return self.forward(batch)
        if "image_index" in batch:
            index = batch["image_index"]
            batch = {**{k: v for k, v in batch.items() if k != "image_index"},
                     "features": batch["features"].index_select(0, index), "mask": batch["mask"].index_select(0, index)}
        return super().unroll(batch, feed)

    def init_state(self, feats: torch.Tensor, mask: torch.Tensor) -> State:
        """Encoder once: memory mask [B, K], cross keys/values ck{i}, cv{i} [B, H, K, d_k] per decoder layer,
        empty self-attention caches k{i}, v{i} [B, H, 0, d_k]."""
        memory = self.encode(feats, mask)
        state: State = {"memory_mask": mask}
        for i, layer in enumerate(self.decoder):
            state[f"ck{i}"], state[f"cv{i}"] = layer.cross.keys_values(memory)
            empty = memory.new_zeros(memory.size(0), layer.self_attn.h, 0, layer.self_attn.dk)
            state[f"k{i}"], state[f"v{i}"] = empty, empty
        return state

    def step_logits(self, tokens: torch.Tensor, state: State, feats: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, State, torch.Tensor, dict[str, torch.Tensor]]:
        """One position: tokens [B] at position t (the cache length) -> (logits [B, V], state with the caches
        one longer, attn [B, K], {})."""
        n = len(self.decoder)
        past = [(state[f"k{i}"], state[f"v{i}"]) for i in range(n)]
        memory = [(state[f"ck{i}"], state[f"cv{i}"]) for i in range(n)]
        x = self._embed_words(tokens[:, None], past[0][0].size(2))
        logits, attn, cache = self._decode(x, past, memory, state["memory_mask"], None)
        new = dict(state)
        for i, (k, v) in enumerate(cache):
            new[f"k{i}"], new[f"v{i}"] = k, v
        return logits[:, 0], new, attn[:, 0], {}
