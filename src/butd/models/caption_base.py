"""The shared :class:`CaptionModel` interface of every captioning model (registered in registry.py).

Every caption model works on a set of K feature vectors (regions, or the H*W cells of a grid) with a mask:

* ``init_state(feats [B, K, D], mask [B, K] bool) -> state``: a dict of batch-first tensors, so decoders can
  reorder / repeat it along dim 0 (beam search, one state per sample); entries that are not tensors (e.g. weight
  views made once per call) are shared by every row and pass through unchanged (:func:`reorder_state`);
* ``step(tokens [B], state, feats, mask) -> (logprobs [B, V], state, attn [B, K])``: one decoding step;
* ``forward(batch)``: teacher forcing over ``batch["captions"]`` [B, L] (BOS .. EOS, PAD=0) returning
  ``{"logits": [B, L-1, V], "attn": [B, L-1, K], "targets": [B, L-1], ...}``;
* ``loss(outputs, batch) -> {"loss", "xe", ...}``: the training objective (scalar tensors).

Batches are image-major when ``batch["image_index"]`` (long [B_cap]) is present: ``features`` [B_img, K, D] and
``mask`` [B_img, K] hold one row per image and ``image_index[n]`` is the image row of caption row n (an image's
captions share its row, as self-critical.pytorch's ``seq_per_img``). ``unroll`` then runs ``init_state`` once
per image (the region projections) and expands the state to the captions; without it there is one feature row
per caption. :func:`caption_rows` gives any per-image tensor of the batch per caption row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PAD", "CaptionModel", "State", "caption_rows", "masked_mean", "reorder_state"]

State = dict[str, Any]  # batch-first tensors, plus per-call constants shared by all rows (anything else)
Feed = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]  # (t, words [B], prev logits [B, V]) -> words
PAD = 0  # same as butd.datasets.vocab.PAD (models do not import the data package)


def masked_mean(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of feats [B, K, D] over the K positions where mask [B, K] is True -> [B, D]."""
    m = mask.to(feats.dtype).unsqueeze(-1)
    return (feats * m).sum(1) / m.sum(1).clamp_min(1.0)


def reorder_state(state: State, index: torch.Tensor) -> State:
    """Rows ``index`` [N] of every tensor entry (dim 0); other entries are shared by all rows and kept."""
    return {k: v.index_select(0, index) if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def caption_rows(batch: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """A per-feature-row tensor of ``batch`` (e.g. its mask) per caption row: expanded by ``image_index``."""
    index = batch.get("image_index")
    return x if index is None else x.index_select(0, index.to(x.device))


class CaptionModel(nn.Module):
    """Base class: subclasses implement ``init_state`` and ``step_logits``; may extend ``loss``."""

    vocab_size: int

    def init_state(self, feats: torch.Tensor, mask: torch.Tensor) -> State:
        raise NotImplementedError

    def step_logits(self, tokens: torch.Tensor, state: State, feats: torch.Tensor, mask: torch.Tensor,
                    emb: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, State, torch.Tensor, dict[str, torch.Tensor]]:
        """One step: (logits [B, V], new state, attention [B, K], extras {name: [B]}). ``emb`` [B, E]: the
        words' embeddings when the caller made them (``embed_words``); otherwise the step embeds ``tokens``."""
        raise NotImplementedError

    def embed_words(self, words: torch.Tensor) -> torch.Tensor | None:
        """Embeddings [B, T, E] of a whole caption batch's input words [B, T], made once for teacher forcing
        (one embedding backward instead of one per step), or None: ``step_logits`` embeds each step's words."""
        return None

    def step(self, tokens: torch.Tensor, state: State, feats: torch.Tensor, mask: torch.Tensor
             ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """tokens [B] (previous word) -> (log-probabilities [B, V], new state, attention [B, K])."""
        logits, state, attn, _ = self.step_logits(tokens, state, feats, mask)
        return F.log_softmax(logits, dim=-1), state, attn

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Teacher forcing: logits [B, T, V], attn [B, T, K], targets [B, T], stacked extras [B, T]."""
        return self.unroll(batch)

    def unroll(self, batch: dict[str, Any], feed: Feed | None = None) -> dict[str, torch.Tensor]:
        """Teacher forcing over ``batch["captions"]``; ``feed(t, words [B], prev_logits [B, V]) -> words [B]``
        may replace the ground-truth input word of step t >= 1 (scheduled sampling). An image-major batch
        (``image_index``) gets ``init_state`` per image, then the state, features and mask per caption row."""
        feats, mask, caps = batch["features"], batch["mask"], batch["captions"]
        inputs, targets = caps[:, :-1], caps[:, 1:]
        state = self.init_state(feats, mask)
        emb = self.embed_words(inputs) if feed is None else None
        index = batch.get("image_index")
        if index is not None:
            index = index.to(feats.device)
            state = reorder_state(state, index)
            feats, mask = feats.index_select(0, index), mask.index_select(0, index)
        logits, attns, extras = [], [], []
        for t in range(inputs.size(1)):
            words = inputs[:, t] if feed is None or t == 0 else feed(t, inputs[:, t], logits[-1])
            if emb is None:
                lg, state, attn, ex = self.step_logits(words, state, feats, mask)
            else:
                lg, state, attn, ex = self.step_logits(words, state, feats, mask, emb=emb[:, t])
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
