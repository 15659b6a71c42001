"""SCST reward with the end token kept (self-critical.pytorch) or dropped, and a truncated caption."""

from __future__ import annotations

import torch

from butd.datasets.vocab import Vocab
from butd.evaluate.cider import CiderD
from butd.models.registry import build_caption_model
from butd.train.scst import ScstConfig, ScstObjective, reward_refs, reward_texts

CORPUS = [
    ["a man riding a wave on a surfboard", "a surfer rides a wave on a surfboard", "a man surfing on a wave"],
    ["a dog runs on the grass", "a brown dog running in a field", "a dog plays on the grass"],
    ["a plate of food on a table", "a table with a plate of food", "food on a white plate"],
    ["a cat sleeping on a bed", "a cat lying on a bed", "a cat asleep on the bed"],
]
WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", *sorted({w for refs in CORPUS for r in refs for w in r.split()})]


def _ids(vocab: Vocab, text: str, eos: bool) -> list[int]:
    return [vocab.index[w] for w in text.split()] + ([2] if eos else [])


def test_reward_texts_and_refs() -> None:
    vocab = Vocab(WORDS)
    rows = torch.tensor([_ids(vocab, "a cat on a bed", True) + [0, 0],
                         _ids(vocab, "a cat on a bed a cat", False) + [0]])
    assert reward_texts(rows, vocab, True) == ["a cat on a bed <eos>", "a cat on a bed a cat"]
    assert reward_texts(rows, vocab, False) == ["a cat on a bed", "a cat on a bed a cat"]
    assert reward_refs([["a b"]], True) == [["a b <eos>"]] and reward_refs([["a b"]], False) == [["a b"]]
    assert ScstConfig().reward_eos and ScstConfig().max_len == 20


def test_keeping_eos_punishes_a_truncated_caption_more() -> None:
    refs = CORPUS[0]
    full, cut = "a man riding a wave on a surfboard", "a man riding a wave on a"
    ratios = {}
    for eos in (True, False):
        scorer = CiderD(reward_refs(CORPUS, eos))
        cands = [f"{full} <eos>" if eos else full, cut]  # the truncated one never emitted an end token
        _, scores = scorer.score_lists(cands, reward_refs([refs, refs], eos))
        ratios[eos] = scores[1] / scores[0]
    assert ratios[True] < ratios[False]


def test_objective_scores_samples_with_the_end_token() -> None:
    vocab = Vocab(WORDS)
    torch.manual_seed(0)
    model = build_caption_model("updown", len(vocab), 4, {"embed_dim": 8, "hidden_dim": 8, "att_dim": 4})
    for eos in (True, False):
        obj = ScstObjective(model, CiderD(reward_refs(CORPUS, eos)), vocab, ScstConfig(samples=2, reward_eos=eos))
        row = torch.tensor([_ids(vocab, CORPUS[1][0], True)])
        got = obj.rewards(row.repeat(2, 1), [CORPUS[1]])
        expect = CiderD(reward_refs(CORPUS, eos)).score_lists(reward_texts(row, vocab, eos),
                                                              reward_refs([CORPUS[1]], eos))[1][0]
        assert torch.allclose(got, torch.full((1, 2), float(expect)))
