"""A trained model over batches of a dataset: caption tokens, VQA answer ids (validation, eval, reports).

Both take any iterable of collated batches (dicts of tensors, as the datasets' collate functions make them),
so training-time validation (``butd.train``) and the evaluation of a finished run (``butd.tasks``) run the
same code. The model is put in eval mode for the call and given back in the mode it was in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from butd.models.caption_base import CaptionModel
from butd.models.decoding import DecodeConfig, decode

__all__ = ["answer_ids", "caption_tokens", "evaluation_mode"]


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without gradients for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def caption_tokens(model: CaptionModel, batches: Iterable[dict[str, Any]], cfg: DecodeConfig,
                   words: Sequence[str] | None = None, device: str | torch.device = "cpu"
                   ) -> Iterator[tuple[list[str], torch.Tensor]]:
    """(image ids, token ids [B, T] on the CPU) per batch, decoded as ``cfg`` says (``words``: the vocabulary,
    needed for the repeat block)."""
    with evaluation_mode(model):
        for batch in batches:
            tokens = decode(model, batch["features"].to(device), batch["mask"].to(device), cfg, words)
            yield list(batch["image_ids"]), tokens.cpu()


def answer_ids(model: nn.Module, batches: Iterable[dict[str, Any]], device: str | torch.device = "cpu"
               ) -> Iterator[tuple[list[int], list[int]]]:
    """(question ids, index of the best answer) per batch of a VQA model (``model(batch)["logits"]``)."""
    with evaluation_mode(model):
        for batch in batches:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            best = model(batch)["logits"].argmax(dim=1).tolist()
            yield [int(q) for q in batch["question_id"].tolist()], best
