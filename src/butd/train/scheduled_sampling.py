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
        return self.model.unroll(batch, self._feed)

    def _feed(self, t: int, words: torch.Tensor, prev_logits: torch.Tensor) -> torch.Tensor:
        """Each ground-truth word, with probability ``prob``, replaced by one sampled from the previous step."""
        swap = torch.rand(words.shape, device=words.device) < self.prob
        if not bool(swap.any()):
            return words
        prev = prev_logits.detach().clone()
        prev[:, :2] = float("-inf")  # PAD and BOS are never fed as words
        sampled = torch.multinomial(torch.softmax(prev, dim=-1), 1).squeeze(1)
        return torch.where(swap, sampled, words)
