"""Self-critical sequence training (Rennie et al., 2017) with a CIDEr-D reward.

For each image, ``samples`` captions are drawn from the model; each gets the reward CIDEr-D(sample, refs)
(document frequencies fixed from the training references) minus a baseline, and the loss is

    L = - sum_{n,t} (r_n - b_n) * log p(w_{n,t}) * valid_{n,t} / sum_{n,t} valid_{n,t}

With ``reward_eos`` (the default, as self-critical.pytorch: its ``array_to_str`` keeps the end token of a sample
and its cached document frequencies come from references with ``<eos>`` appended) a sample that ended is
scored with a final "<eos>" word against references that end with one, so stopping early is rewarded only
where the references stop; the scorer's document frequencies must then come from :func:`reward_refs`.

Baselines (registry :data:`SCST_BASELINES`): ``greedy`` = reward of the model's own greedy caption
(test-time inference, computed in eval mode without gradients); ``mean`` = mean reward of the image's other
samples. :class:`ScstObjective` wraps a caption model so that the generic loop (``butd.train.loop.fit``)
can optimise it; its ``state_dict`` is the wrapped model's, so checkpoints load into the bare model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from butd.datasets.vocab import EOS, PAD, Vocab, tokens_to_text
from butd.evaluate.cider import CiderD
from butd.models.caption_base import CaptionModel
from butd.models.decoding import greedy_decode, sample_decode
from butd.registry import Entry, Registry

__all__ = ["EOS_WORD", "SCST_BASELINES", "ScstConfig", "ScstObjective", "reward_refs", "reward_texts"]

EOS_WORD = "<eos>"


@dataclass(frozen=True)
class ScstConfig:
    """SCST phase settings (the loop settings -- epochs, lr, batch size in images -- live in a LoopConfig)."""

    baseline: str = "greedy"  # a key of SCST_BASELINES
    samples: int = 5  # sampled captions per image
    max_len: int = 20  # tokens per sample, EOS included (self-critical max_length)
    temperature: float = 1.0
    reward_eos: bool = True  # score the end token too (self-critical.pytorch); False drops it on both sides


def reward_texts(tokens: torch.Tensor, vocab: Vocab, reward_eos: bool) -> list[str]:
    """Captions of token rows [N, T] as the reward sees them: "... <eos>" for rows that ended."""
    texts = tokens_to_text(tokens, vocab)
    if not reward_eos:
        return texts
    ended = (tokens == EOS).any(1).tolist()
    return [f"{t} {EOS_WORD}".strip() if e else t for t, e in zip(texts, ended, strict=True)]


def reward_refs(refs: Sequence[Sequence[str]], reward_eos: bool) -> list[list[str]]:
    """Reference captions as the reward sees them (each ends with "<eos>" when ``reward_eos``)."""
    return [[f"{r} {EOS_WORD}" if reward_eos else r for r in rs] for rs in refs]


def _greedy_baseline(obj: ScstObjective, batch: Mapping[str, Any], rewards: torch.Tensor) -> torch.Tensor:
    """Reward of the greedy caption, [B, n] (same value for the n samples of an image)."""
    was_training = obj.model.training
    obj.model.eval()
    try:
        greedy = greedy_decode(obj.model, batch["features"], batch["mask"], obj.config.max_len)["tokens"]
    finally:
        obj.model.train(was_training)
    refs = reward_refs(batch["refs"], obj.config.reward_eos)
    _, scores = obj.scorer.score_lists(reward_texts(greedy, obj.vocab, obj.config.reward_eos), refs)
    return torch.as_tensor(scores, dtype=rewards.dtype, device=rewards.device).unsqueeze(1).expand_as(rewards)


def _mean_baseline(obj: ScstObjective, batch: Mapping[str, Any], rewards: torch.Tensor) -> torch.Tensor:
    """Mean reward of the other samples of the same image, [B, n]."""
    n = rewards.size(1)
    if n < 2:
        raise ValueError("the 'mean' SCST baseline needs samples >= 2")
    return (rewards.sum(1, keepdim=True) - rewards) / (n - 1)


# name -> Entry(config, ``(objective, batch, rewards [B, n]) -> baseline``); butd.registry style
SCST_BASELINES = Registry("SCST baseline", {
    "greedy": Entry(ScstConfig, _greedy_baseline, "reward of the greedy caption (Rennie et al. 2017)"),
    "mean": Entry(ScstConfig, _mean_baseline, "mean reward of the other samples of the image")})


class ScstObjective(nn.Module):
    """``forward(batch) -> {"loss", "reward", "baseline", "advantage_std"}`` for a per-image batch.

    batch: feats [B, K, D], mask [B, K], refs (B lists of reference strings). The scorer is built once from
    the training references as :func:`reward_refs` gives them and passed in.
    """

    def __init__(self, model: CaptionModel, scorer: CiderD, vocab: Vocab, config: ScstConfig = ScstConfig()
                 ) -> None:
        super().__init__()
        if config.baseline not in SCST_BASELINES:
            known = ", ".join(SCST_BASELINES)
            raise ValueError(f"unknown SCST baseline {config.baseline!r} (known: {known})")
        if config.samples < 1:
            raise ValueError("SCST needs samples >= 1")
        self.model, self.scorer, self.vocab, self.config = model, scorer, vocab, config

    # checkpoints hold the bare caption model
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def rewards(self, tokens: torch.Tensor, refs: Sequence[Sequence[str]]) -> torch.Tensor:
        """CIDEr-D of sampled rows [B*n, T] (image-major) against their image's refs -> [B, n]."""
        n, eos = self.config.samples, self.config.reward_eos
        refs_rep = [r for r in reward_refs(refs, eos) for _ in range(n)]
        _, scores = self.scorer.score_lists(reward_texts(tokens, self.vocab, eos), refs_rep)
        return torch.as_tensor(scores, dtype=torch.float32, device=tokens.device).view(len(refs), n)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.config
        out = sample_decode(self.model, batch["features"], batch["mask"], cfg.max_len, n=cfg.samples,
                            temperature=cfg.temperature, with_grad=True)
        tokens, logprobs = out["tokens"], out["logprobs"]  # [B*n, T]
        rewards = self.rewards(tokens, batch["refs"])  # [B, n]
        with torch.no_grad():
            base = SCST_BASELINES[cfg.baseline](self, batch, rewards)
        adv = (rewards - base).reshape(-1, 1)
        valid = (tokens != PAD).to(logprobs.dtype)
        loss = -(adv * logprobs * valid).sum() / valid.sum().clamp_min(1.0)
        return {"loss": loss, "loss_weight": valid.sum(), "reward": rewards.mean(), "baseline": base.mean(),
                "advantage_std": adv.std() if adv.numel() > 1 else adv.sum() * 0}
