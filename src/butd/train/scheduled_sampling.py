"""Scheduled sampling for cross-entropy training (Bengio et al. 2015), as self-critical.pytorch runs it.

From the second step on, each caption's input word is, with probability ``prob``, a word sampled from the
model's own previous output distribution instead of the ground truth (self-critical ``AttModel._forward``).
``prob`` follows :func:`butd.train.schedules.scheduled_sampling_prob` per epoch: the wrapper is also a loop
callback that updates it when an epoch starts (also a resumed one). Like ``ScstObjective`` its
``state_dict`` is the wrapped model's, so checkpoints load into the bare model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from butd.models.caption_base import CaptionModel
from butd.train.loop import Callback, LoopState
from butd.train.schedules import ScheduledSamplingConfig, scheduled_sampling_prob

__all__ = ["ScheduledSampling"]


class ScheduledSampling(nn.Module, Callback):
    """``forward(batch)`` = the model's teacher forcing with scheduled sampling (outputs as ``CaptionModel``)."""

    def __init__(self, model: CaptionModel, config: ScheduledSamplingConfig) -> None:
        nn.Module.__init__(self)
        self.model, self.config = model, config
        self.prob = 0.0

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def on_epoch_start(self, state: LoopState) -> None:
        self.prob = scheduled_sampling_prob(state.epoch, self.config)

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The model's loss, plus the current sampling probability (logged)."""
        return {**self.model.loss(outputs, batch), "ss_prob": torch.tensor(self.prob)}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if not self.training or self.prob <= 0.0:
            return self.model(batch)
        feats, mask, caps = batch["features"], batch["mask"], batch["captions"]
        inputs, targets = caps[:, :-1], caps[:, 1:]
        state = self.model.init_state(feats, mask)
        logits, attns, extras = [], [], []
        for t in range(inputs.size(1)):
            tokens = inputs[:, t]
            if t > 0:
                swap = torch.rand(tokens.shape, device=tokens.device) < self.prob
                if bool(swap.any()):
                    prev = logits[-1].detach().clone()
                    prev[:, :2] = float("-inf")  # PAD and BOS are never fed as words
                    probs = torch.softmax(prev, dim=-1)
                    sampled = torch.multinomial(probs, 1).squeeze(1)
                    tokens = torch.where(swap, sampled, tokens)
            lg, state, attn, ex = self.model.step_logits(tokens, state, feats, mask)
            logits.append(lg)
            attns.append(attn)
            extras.append(ex)
        out = {"logits": torch.stack(logits, 1), "attn": torch.stack(attns, 1), "targets": targets}
        for key in extras[0] if extras else ():
            out[key] = torch.stack([ex[key] for ex in extras], 1)
        return out
