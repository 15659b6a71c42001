"""Shapes, masking, losses and registry of the captioning models (every caption model of the registry)."""

from __future__ import annotations

import pytest
import torch
from caption_sizes import tiny

from butd.models.registry import build_caption_model, caption_models
from butd.models.sat import doubly_stochastic_penalty

SMALL = {"embed_dim": 16, "hidden_dim": 24, "att_dim": 12, "dropout": 0.0}
V, D = 11, 8


def _batch(b: int = 3, k: int = 5, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, k, D, generator=g)
    mask = torch.ones(b, k, dtype=torch.bool)
    mask[0, 3:] = False
    mask[1, 1:] = False
    feats[~mask] = 0.0
    caps = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 7, 2, 0, 0, 0], [1, 8, 9, 10, 4, 2]])[:b]
    return {"features": feats, "mask": mask, "captions": caps}


@pytest.mark.parametrize("name", caption_models())
def test_forward_shapes_and_masks(name: str) -> None:
    torch.manual_seed(0)
    model = build_caption_model(name, V, D, tiny(name))
    model.eval()
    batch = _batch()
    out = model(batch)
    assert out["logits"].shape == (3, 5, V) and out["attn"].shape == (3, 5, 5)
    assert torch.equal(out["targets"], batch["captions"][:, 1:])
    attn = out["attn"]
    assert torch.all(attn[0, :, 3:] == 0) and torch.all(attn[1, :, 1:] == 0)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 5))
    losses = model.loss(out, batch)
    assert losses["loss"].ndim == 0 and torch.isfinite(losses["loss"])
    # padding content must not matter
    noisy = dict(batch, features=batch["features"].masked_fill(~batch["mask"].unsqueeze(-1), 7.0))
    torch.testing.assert_close(model(noisy)["logits"], out["logits"])


@pytest.mark.parametrize("name", caption_models())
def test_step_matches_forward(name: str) -> None:
    torch.manual_seed(1)
    model = build_caption_model(name, V, D, tiny(name)).eval()
    batch = _batch()
    out = model(batch)
    state = model.init_state(batch["features"], batch["mask"])
    for t in range(3):
        logprobs, state, attn = model.step(batch["captions"][:, t], state, batch["features"], batch["mask"])
        torch.testing.assert_close(logprobs, torch.log_softmax(out["logits"][:, t], -1))
        torch.testing.assert_close(attn, out["attn"][:, t])


@pytest.mark.parametrize("name", caption_models())
def test_grid_features_and_overfit(name: str) -> None:
    torch.manual_seed(2)
    model = build_caption_model(name, V, D, tiny(name))
    batch = _batch()
    batch["mask"] = torch.ones(3, 5, dtype=torch.bool)  # a 1x5 "grid": every cell real
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    first = None
    for _ in range(60):
        losses = model.loss(model(batch), batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = first if first is not None else float(losses["xe"])
    assert float(losses["xe"]) < 0.3 * first


def test_sat_hard_reinforce_and_baseline() -> None:
    torch.manual_seed(3)
    model = build_caption_model("sat-hard", V, D, SMALL)
    model.train()
    batch = _batch()
    out = model(batch)
    assert {"loc_logp", "entropy"} <= set(out) and out["loc_logp"].shape == (3, 5)
    assert (out["loc_logp"] <= 0).all()
    losses = model.loss(out, batch)
    b1 = float(model.baseline)
    assert b1 > 0 and {"reinforce", "entropy", "baseline"} <= set(losses)
    losses["loss"].backward()
    assert model.att_w.weight.grad is not None and model.att_w.weight.grad.abs().sum() > 0
    out2 = model(batch)
    model.loss(out2, batch)
    nll = torch.nn.functional.cross_entropy(out2["logits"].detach().transpose(1, 2), out2["targets"],
                                            ignore_index=0, reduction="none")
    cost = float(nll.sum(1).mean())
    assert float(model.baseline) == pytest.approx(0.9 * b1 + 0.1 * cost, rel=1e-5)
    model.eval()
    assert "loc_logp" not in model(batch)


def test_sat_hard_expected_prob_extremes() -> None:
    torch.manual_seed(4)
    always_expected = build_caption_model("sat-hard", V, D, {**SMALL, "expected_prob": 1.0}).train()
    assert torch.all(always_expected(_batch())["loc_logp"] == 0)
    never = build_caption_model("sat-hard", V, D, {**SMALL, "expected_prob": 0.0}).train()
    assert torch.all(never(_batch())["loc_logp"][2] < 0)


def test_doubly_stochastic_penalty() -> None:
    attn = torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]])  # [1, T=3, K=3]
    targets = torch.tensor([[4, 2, 0]])  # last step is PAD
    mask = torch.tensor([[True, True, False]])
    assert float(doubly_stochastic_penalty(attn, targets, mask)) == pytest.approx(0.0)
    model = build_caption_model("sat-soft", V, D, {**SMALL, "alpha_c": 2.0})
    batch = _batch()
    losses = model.loss(model(batch), batch)
    expected = float(losses["xe"] + 2.0 * losses["attn_reg"])
    assert float(losses["loss"].detach()) == pytest.approx(expected, rel=1e-5)


def test_registry_errors_and_defaults() -> None:
    with pytest.raises(ValueError, match="unknown caption model"):
        build_caption_model("nope", V, D)
    with pytest.raises(ValueError, match="unknown"):
        build_caption_model("updown", V, D, {"hidden": 3})
    updown = build_caption_model("updown", V, D)
    assert updown.config.hidden_dim == 1000 and updown.config.att_dim == 512
    assert updown.att_lstm.input_size == 1000 + D + 1000 and updown.lang_lstm.input_size == D + 1000
