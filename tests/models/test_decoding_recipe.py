"""Decoding as the references do it: max_len counts every generated token, and the Caffe Up-Down decoder's
rule that a word may not repeat unless it is in the allowed list."""

from __future__ import annotations

import pytest
import torch

from butd.models.caption_base import CaptionModel, State
from butd.models.decoding import (
    CAFFE_ALLOWED_REPEATS,
    DecodeConfig,
    beam_search,
    decode,
    greedy_decode,
    repeat_mask,
    sample_decode,
    with_beam,
)

WORDS = ["<pad>", "<bos>", "<eos>", "a", "dog", "runs", "the"]


class Fixed(CaptionModel):
    """Same next-word preferences at every step, whatever came before: dog > a > runs > the > eos."""

    def __init__(self, eos_logit: float = -5.0) -> None:
        super().__init__()
        self.vocab_size = len(WORDS)
        self.logits = torch.tensor([0.0, 0.0, eos_logit, 3.0, 4.0, 2.0, 1.0])

    def init_state(self, feats: torch.Tensor, mask: torch.Tensor) -> State:
        return {"h": feats.new_zeros(feats.size(0), 1)}

    def step_logits(self, tokens: torch.Tensor, state: State, feats: torch.Tensor, mask: torch.Tensor):
        attn = mask.float() / mask.float().sum(1, keepdim=True)
        return self.logits.expand(tokens.size(0), -1).clone(), state, attn, {}


def _inputs(b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(b, 3, 4), torch.ones(b, 3, dtype=torch.bool)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_max_len_is_exact(method: str) -> None:
    model = Fixed()  # never wants to stop
    feats, mask = _inputs()
    for max_len in (1, 4, 9):
        tokens = decode(model, feats, mask, DecodeConfig(method=method, beam=3, max_len=max_len))
        assert tokens.size(1) == max_len  # never more tokens than max_len, EOS included
        assert int((tokens != 0).sum(1).max()) <= max_len
    with pytest.raises(ValueError, match="max_len"):
        greedy_decode(model, feats, mask, max_len=0)


def test_default_decode_is_beam5_max20() -> None:
    cfg = DecodeConfig()
    assert (cfg.method, cfg.beam, cfg.max_len, cfg.block_repeats) == ("beam", 5, 20, False)
    assert with_beam(cfg, 1).method == "greedy" and with_beam(cfg, 3).beam == 3 and with_beam(cfg, None) == cfg


def test_repeat_block_forbids_words_already_used() -> None:
    model = Fixed()
    feats, mask = _inputs()
    plain = greedy_decode(model, feats, mask, max_len=5)["tokens"]
    assert plain[0].tolist() == [4, 4, 4, 4, 4]  # "dog dog dog dog dog"
    no_repeat = repeat_mask(WORDS, allowed=())
    greedy = greedy_decode(model, feats, mask, max_len=8, no_repeat=no_repeat)["tokens"]
    assert greedy[0].tolist()[:5] == [4, 3, 5, 6, 2]  # dog a runs the <eos>
    beam = beam_search(model, feats, mask, beam=3, max_len=8, no_repeat=no_repeat)["tokens"]
    # the same words in any order score the same; every beam caption uses each word once
    assert sorted(beam[0].tolist()[:4]) == [3, 4, 5, 6] and beam[0, 4] == 2
    # words in the allowed list may repeat ("a" here)
    allow_a = repeat_mask(WORDS, allowed=("a",))
    out = greedy_decode(model, feats, mask, max_len=6, no_repeat=allow_a)["tokens"]
    assert out[0].tolist() == [4, 3, 3, 3, 3, 3]
    sampled = sample_decode(model, feats, mask, 8, n=4, no_repeat=no_repeat)["tokens"]
    for row in sampled.tolist():
        words = [w for w in row if w > 2]
        assert len(words) == len(set(words))


def test_decode_reads_block_repeats_from_the_config() -> None:
    model = Fixed()
    feats, mask = _inputs()
    cfg = DecodeConfig(method="beam", beam=5, max_len=8, block_repeats=True, allowed_repeats=())
    out = decode(model, feats, mask, cfg, WORDS)[0].tolist()
    assert sorted(out[:4]) == [3, 4, 5, 6] and out[4] == 2
    with pytest.raises(ValueError, match="vocabulary"):
        decode(model, feats, mask, cfg)
    assert "a" in CAFFE_ALLOWED_REPEATS and "dog" not in CAFFE_ALLOWED_REPEATS
    assert not bool(repeat_mask(WORDS, CAFFE_ALLOWED_REPEATS)[[0, 1, 2, 3, 6]].any())  # specials, a, the


def test_length_penalty_prefers_longer_finished_beams() -> None:
    # EOS is likely now: without a penalty the shortest caption wins, with a strong one a longer one
    model = Fixed(eos_logit=3.9)
    feats, mask = _inputs(1)
    short = beam_search(model, feats, mask, beam=4, max_len=6)["tokens"]
    long = beam_search(model, feats, mask, beam=4, max_len=6, length_penalty=3.0)["tokens"]
    assert int((long != 0).sum()) > int((short != 0).sum())
