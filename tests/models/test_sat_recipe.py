"""Show-Attend-Tell as arctic-captions trains it: per-sentence doubly stochastic weight, the beta gate on the
sampled context too, one expected/sampled draw per minibatch, and the baseline used before its update."""

from __future__ import annotations

import pytest
import torch

from butd.models.registry import build_caption_model
from butd.models.sat import doubly_stochastic_penalty

SMALL = {"embed_dim": 16, "hidden_dim": 24, "att_dim": 12, "dropout": 0.0}
V, D = 11, 8


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(3, 5, D, generator=g)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    feats[~mask] = 0.0
    caps = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 7, 2, 0, 0, 0], [1, 8, 9, 10, 4, 2]])
    return {"features": feats, "mask": mask, "captions": caps}


def test_penalty_has_the_per_sentence_weight() -> None:
    # two sentences of 2 and 4 tokens, each putting all attention on location 0 at every step
    attn = torch.zeros(2, 4, 3)
    attn[:, :, 0] = 1.0
    targets = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 2]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    per_sentence = torch.tensor([(1 - 2) ** 2 + 1 + 1, (1 - 4) ** 2 + 1 + 1], dtype=torch.float32)
    # paper: sum_t(-log p) + lambda * per_sentence; with a token-mean XE both are divided by the mean length 3
    expected = per_sentence.mean() / 3.0
    assert float(doubly_stochastic_penalty(attn, targets, mask)) == pytest.approx(float(expected))


def test_sat_soft_loss_adds_lambda_times_the_penalty() -> None:
    torch.manual_seed(0)
    model = build_caption_model("sat-soft", V, D, {**SMALL, "alpha_c": 1.0}).train()
    batch = _batch()
    out = model(batch)
    losses = model.loss(out, batch)
    reg = doubly_stochastic_penalty(out["attn"], out["targets"], batch["mask"])
    assert float(losses["loss"]) == pytest.approx(float(losses["xe"] + reg), rel=1e-5)
    assert model.config.alpha_c == 1.0  # arctic-captions' evaluate_coco.py value


def test_sat_hard_gates_the_sampled_context() -> None:
    torch.manual_seed(1)
    model = build_caption_model("sat-hard", V, D, {**SMALL, "selector": True, "expected_prob": 0.0}).train()
    batch = _batch()
    state = model.init_state(batch["features"], batch["mask"])
    assert bool(state["use_sample"].all())
    alpha = torch.zeros(3, 5)
    alpha[:, 2] = 1.0  # the sample is location 2 for certain
    z, extras = model.context(alpha, batch["features"], state)
    beta = torch.sigmoid(model.f_beta(state["h"]))
    torch.testing.assert_close(z, beta * batch["features"][:, 2])
    assert "beta" in extras and torch.allclose(extras["loc_logp"], torch.zeros(3), atol=1e-6)  # log 1
    model.eval()  # expected context: gated as well
    z_eval, _ = model.context(alpha, batch["features"], model.init_state(batch["features"], batch["mask"]))
    torch.testing.assert_close(z_eval, beta * batch["features"][:, 2])


def test_sat_hard_draws_expected_or_sampled_once_per_minibatch() -> None:
    torch.manual_seed(2)
    model = build_caption_model("sat-hard", V, D, {**SMALL, "expected_prob": 0.5}).train()
    batch = _batch()
    kinds = []
    for _ in range(24):
        logp = model(batch)["loc_logp"][[0, 2]]  # rows with several real locations
        sampled = logp != 0
        assert bool(sampled.all()) or not bool(sampled.any()), "mixed expected/sampled steps in one minibatch"
        kinds.append(bool(sampled.all()))
    assert 4 <= sum(kinds) <= 20  # both kinds occur, about half each


def test_sat_hard_uses_the_baseline_before_updating_it() -> None:
    torch.manual_seed(3)
    model = build_caption_model("sat-hard", V, D, {**SMALL, "expected_prob": 0.0}).train()
    model.baseline.fill_(5.0)
    model.baseline_ready.fill_(True)
    batch = _batch()
    out = model(batch)
    losses = model.loss(out, batch)
    nll = torch.nn.functional.cross_entropy(out["logits"].detach().transpose(1, 2), out["targets"],
                                            ignore_index=0, reduction="none")
    valid = (out["targets"] != 0).float()
    cost = (nll * valid).sum(1)
    logp = (out["loc_logp"].detach() * valid).sum(1)
    expected = float(((cost - 5.0) * logp).mean() / valid.sum(1).mean())
    assert float(losses["reinforce"]) == pytest.approx(expected, rel=1e-5)
    assert float(losses["baseline"]) == 5.0
    assert float(model.baseline) == pytest.approx(0.9 * 5.0 + 0.1 * float(cost.mean()), rel=1e-5)
