"""Greedy, sampling and beam search over a model's step function."""

from __future__ import annotations

import pytest
import torch

from butd.models.decoding import DecodeConfig, beam_search, decode, greedy_decode, sample_decode
from butd.models.registry import build_caption_model

SMALL = {"embed_dim": 16, "hidden_dim": 24, "att_dim": 12, "dropout": 0.0}


def _setup(name: str = "updown", seed: int = 0, b: int = 6):
    torch.manual_seed(seed)
    model = build_caption_model(name, 9, 8, SMALL).eval()
    feats = torch.randn(b, 4, 8)
    mask = torch.ones(b, 4, dtype=torch.bool)
    mask[0, 2:] = False
    return model, feats, mask


@pytest.mark.parametrize("name", ["updown", "sat-soft", "sat-hard"])
def test_beam1_equals_greedy(name: str) -> None:
    for seed in range(3):
        model, feats, mask = _setup(name, seed)
        g = greedy_decode(model, feats, mask, max_len=7)
        bm = beam_search(model, feats, mask, beam=1, max_len=7)
        t = max(g["tokens"].size(1), bm["tokens"].size(1))
        g_tok = torch.nn.functional.pad(g["tokens"], (0, t - g["tokens"].size(1)))
        b_tok = torch.nn.functional.pad(bm["tokens"], (0, t - bm["tokens"].size(1)))
        assert torch.equal(g_tok, b_tok)
        torch.testing.assert_close(g["logprobs"].sum(1), bm["score"])  # same terms, summed in another order


def test_greedy_output_format() -> None:
    model, feats, mask = _setup()
    out = greedy_decode(model, feats, mask, max_len=5)
    toks = out["tokens"]
    assert toks.size(1) <= 5 and out["attn"].shape[:2] == toks.shape
    for row in toks.tolist():
        if 2 in row:  # PAD after EOS only
            assert all(x == 0 for x in row[row.index(2) + 1:])
            assert 0 not in row[: row.index(2)]
        assert 1 not in row  # BOS is never generated


def test_beam_improves_or_matches_greedy_score() -> None:
    model, feats, mask = _setup(seed=5)
    g = greedy_decode(model, feats, mask, max_len=6)
    bm = beam_search(model, feats, mask, beam=4, max_len=6)
    assert torch.all(bm["score"] >= g["logprobs"].sum(1) - 1e-5)
    assert bm["beams"].shape[:2] == (6, 4)
    assert torch.all(bm["beam_scores"][:, :-1] >= bm["beam_scores"][:, 1:])


def test_beam_length_penalty_runs() -> None:
    model, feats, mask = _setup(seed=6)
    out = beam_search(model, feats, mask, beam=3, max_len=6, length_penalty=1.0)
    assert out["tokens"].shape[0] == 6 and torch.isfinite(out["score"]).all()


def test_sampling() -> None:
    model, feats, mask = _setup(seed=7)
    g1 = torch.Generator().manual_seed(0)
    g2 = torch.Generator().manual_seed(0)
    a = sample_decode(model, feats, mask, 6, n=5, generator=g1)
    b = sample_decode(model, feats, mask, 6, n=5, generator=g2)
    assert a["tokens"].shape[0] == 30 and torch.equal(a["tokens"], b["tokens"])
    assert not a["logprobs"].requires_grad
    c = sample_decode(model, feats, mask, 6, n=2, with_grad=True)
    assert c["logprobs"].requires_grad
    cold = sample_decode(model, feats, mask, 6, temperature=1e-4)
    greedy = greedy_decode(model, feats, mask, 6)
    assert torch.equal(cold["tokens"], greedy["tokens"])
    with pytest.raises(ValueError):
        sample_decode(model, feats, mask, 6, temperature=0.0)


def test_decode_registry() -> None:
    model, feats, mask = _setup()
    assert torch.equal(decode(model, feats, mask, DecodeConfig(method="greedy", max_len=5)),
                       greedy_decode(model, feats, mask, 5)["tokens"])
    with pytest.raises(ValueError, match="unknown decoding"):
        decode(model, feats, mask, DecodeConfig(method="nope"))
