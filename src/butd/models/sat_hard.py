"""Show, Attend and Tell with hard ("stochastic") attention (Xu et al., 2015, section 4.1).

In training, each step samples one location s_t ~ Multinoulli(alpha_t) and uses z_t = a_{s_t}; with
probability ``expected_prob`` (0.5 in the paper) the expected context sum_i alpha_ti a_i is used instead.
As in arctic-captions (capgen.py draws one binomial per scan), that choice is drawn once per minibatch
forward and holds for every example and step of it. With ``selector`` the gate beta_t multiplies whichever
context is used (arctic-captions gates after choosing). The attention network gets the REINFORCE gradient of
the sentence cost c = -log p(y | s, a) with a moving-average baseline, plus an entropy bonus:

    loss = XE + lambda_r * mean_n[(c_n - b) sum_t log p(s_t)] / mean_len - lambda_e * mean_n[sum_t H_t]

(the REINFORCE term is divided by the mean caption length so that lambda_r = 1 weighs like token-mean XE).
The advantage uses the baseline *before* this minibatch updates it (b <- decay * b + (1 - decay) * mean(c)
afterwards, as arctic-captions' shared-variable update); the very first minibatch starts b at its own mean
cost instead of arctic-captions' 0. In evaluation mode (decoding) the context is the expectation, which makes
decoding deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from butd.models.caption_base import PAD, State
from butd.models.sat import SatConfig, SatSoft

__all__ = ["SatHard", "SatHardConfig"]


@dataclass(frozen=True)
class SatHardConfig(SatConfig):
    """Show-Attend-Tell hard attention: SatConfig (selector and lambda as arctic-captions' evaluate_coco.py
    passes them to both attention types) plus the REINFORCE settings."""

    expected_prob: float = 0.5  # chance that a step uses the expected context instead of a sample
    reinforce_weight: float = 1.0  # lambda_r
    entropy_weight: float = 0.01  # lambda_e
    baseline_decay: float = 0.9


class SatHard(SatSoft):
    """Hard-attention Show-Attend-Tell captioner. Features [B, K, D] with mask [B, K]."""

    def __init__(self, vocab_size: int, feature_dim: int, config: SatHardConfig = SatHardConfig()) -> None:
        super().__init__(vocab_size, feature_dim, config)
        self.config: SatHardConfig = config
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("baseline_ready", torch.zeros((), dtype=torch.bool))

    def init_state(self, feats: torch.Tensor, mask: torch.Tensor) -> State:
        """SatSoft's state plus, in training, use_sample [B] bool: one draw for the whole minibatch."""
        state = super().init_state(feats, mask)
        if self.training:
            draw = bool(torch.rand(()) >= self.config.expected_prob)
            state["use_sample"] = torch.full((feats.size(0),), draw, dtype=torch.bool, device=feats.device)
        return state

    def context(self, alpha: torch.Tensor, feats: torch.Tensor, state: State
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training: sampled (or, this minibatch, expected) context [B, D], gated by beta either way, with
        extras loc_logp [B] (log p(s_t), 0 where the expectation was used), entropy [B] of alpha_t."""
        expected = torch.bmm(alpha.unsqueeze(1), feats).squeeze(1)
        if not self.training or "use_sample" not in state:
            return self.gate(expected, state["h"])
        probs = alpha.clamp_min(0.0)
        empty = (probs.sum(-1, keepdim=True) == 0).to(probs.dtype)  # all-masked rows: any valid distribution
        dist = torch.distributions.Categorical(probs=probs + empty)
        loc = dist.sample()  # [B]
        sampled = feats[torch.arange(feats.size(0), device=feats.device), loc]
        use_sample = state["use_sample"]
        z, extras = self.gate(torch.where(use_sample.unsqueeze(-1), sampled, expected), state["h"])
        extras.update(loc_logp=dist.log_prob(loc) * use_sample.to(alpha.dtype), entropy=dist.entropy())
        return z, extras

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """XE (+ optional doubly stochastic term) + REINFORCE on sampled locations - entropy bonus."""
        out = super().loss(outputs, batch)
        if "loc_logp" not in outputs:  # evaluation mode: nothing was sampled
            return out
        logits, targets = outputs["logits"], outputs["targets"]
        valid = (targets != PAD).to(logits.dtype)
        tok_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=PAD,
                                                    reduction="none")  # [B, T]
        cost = (tok_nll * valid).sum(1).detach()  # [B]
        if not bool(self.baseline_ready):  # start from the first batch's cost rather than 0
            with torch.no_grad():
                self.baseline.copy_(cost.mean())
                self.baseline_ready.fill_(True)
        baseline = self.baseline.clone()  # the value before this minibatch's update
        mean_len = valid.sum(1).mean().clamp_min(1.0)
        logp = (outputs["loc_logp"] * valid).sum(1)
        reinforce = ((cost - baseline) * logp).mean() / mean_len
        with torch.no_grad():
            d = self.config.baseline_decay
            self.baseline.mul_(d).add_((1.0 - d) * cost.mean())
        entropy = (outputs["entropy"] * valid).sum(1).mean()
        cfg = self.config
        out["loss"] = out["loss"] + cfg.reinforce_weight * reinforce - cfg.entropy_weight * entropy
        out.update(reinforce=reinforce.detach(), entropy=entropy.detach(), baseline=baseline)
        return out
