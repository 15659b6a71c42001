"""Greedy, sampling and beam search over a model's step function."""

from __future__ import annotations

import pytest
import torch
from caption_sizes import tiny

from butd.models.decoding import EOS, DecodeConfig, beam_search, decode, greedy_decode, sample_decode
from butd.models.registry import build_caption_model, caption_models


def _setup(name: str = "updown", seed: int = 0, b: int = 6, vocab: int = 9):
    torch.manual_seed(seed)
    model = build_caption_model(name, vocab, 8, tiny(name)).eval()
    feats = torch.randn(b, 4, 8)
    mask = torch.ones(b, 4, dtype=torch.bool)
    mask[0, 2:] = False
    return model, feats, mask


@pytest.mark.parametrize("name", caption_models())
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


def _every_caption(words: list[int], max_len: int) -> list[list[int]]:
    """Every caption a decoder can return: ended by EOS within max_len tokens, or max_len words without it."""
    out: list[list[int]] = []

    def grow(prefix: list[int]) -> None:
        if len(prefix) == max_len:
            out.append(prefix)
            return
        out.append([*prefix, EOS])
        for w in words:
            grow([*prefix, w])

    grow([])
    return out


def _forward_scores(model, feats: torch.Tensor, mask: torch.Tensor, captions: list[list[int]]) -> torch.Tensor:
    """Summed log-probabilities of captions (token lists without BOS) for one image, by teacher forcing."""
    n, length = len(captions), max(len(c) for c in captions)
    caps = torch.zeros(n, length + 1, dtype=torch.long)
    caps[:, 0] = 1
    for i, c in enumerate(captions):
        caps[i, 1 : len(c) + 1] = torch.tensor(c)
    with torch.no_grad():
        out = model({"features": feats.expand(n, -1, -1), "mask": mask.expand(n, -1), "captions": caps})
    logp = torch.log_softmax(out["logits"], -1).gather(2, out["targets"].unsqueeze(-1)).squeeze(-1)
    return (logp * (out["targets"] != 0)).sum(1)


def _caption(row: list[int]) -> tuple[int, ...]:
    return tuple(row[: row.index(EOS) + 1] if EOS in row else [t for t in row if t != 0])


@pytest.mark.parametrize("name", caption_models())
def test_beam_search_is_exact(name: str) -> None:
    """A beam as wide as the whole tree returns every caption with its teacher-forced score (so every reordered
    state was right) and the best one first; a narrow beam's captions keep their exact scores too."""
    model, feats, mask = _setup(name, seed=11, b=2, vocab=6)  # words 3, 4, 5
    every = _every_caption([3, 4, 5], 3)  # 1 + 3 + 9 ended by EOS, 27 of 3 words: 40
    wide = beam_search(model, feats, mask, beam=len(every), max_len=3)
    narrow = beam_search(model, feats, mask, beam=3, max_len=3)
    for b in range(2):
        exact = dict(zip(map(tuple, every), _forward_scores(model, feats[b : b + 1], mask[b : b + 1], every).tolist()))
        got = {_caption(row): s for row, s in zip(wide["beams"][b].tolist(), wide["beam_scores"][b].tolist())}
        assert set(got) == set(exact)
        for caption, score in got.items():
            assert score == pytest.approx(exact[caption], abs=1e-5)
        assert _caption(wide["tokens"][b].tolist()) == max(exact, key=exact.get)
        for row, score in zip(narrow["beams"][b].tolist(), narrow["beam_scores"][b].tolist()):
            assert score == pytest.approx(exact[_caption(row)], abs=1e-5)


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
