"""CiderD equals pycocoevalcap's Cider (same corpus) and behaves sensibly."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest

from butd.evaluate.cider import CiderD

pytest.importorskip("pycocoevalcap")
from pycocoevalcap.cider.cider import Cider  # noqa: E402


def _reference(cands: dict, refs: dict) -> tuple[float, np.ndarray]:
    return Cider().compute_score({k: list(v) for k, v in refs.items()}, {k: [cands[k]] for k in refs})


def _random_sents(seed: int, n_items: int) -> tuple[dict, dict]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(40)] + ["a", "the", "on", "red"]

    def sent() -> str:
        return " ".join(rng.choice(words[: rng.randint(3, len(words))]) for _ in range(rng.randint(0, 14)))

    refs = {i: [sent() for _ in range(rng.randint(1, 6))] for i in range(n_items)}
    cands = {i: (refs[i][0] if rng.random() < 0.2 else sent()) for i in refs}
    return cands, refs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_pycocoevalcap_random(seed: int) -> None:
    cands, refs = _random_sents(seed, 120)
    mean_ref, per_ref = _reference(cands, refs)
    mean, per = CiderD(refs).score(cands, refs)
    assert per.shape == (len(refs),)
    assert abs(mean - mean_ref) < 1e-6
    np.testing.assert_allclose(per, per_ref, atol=1e-6, rtol=0)


def test_equal_to_pycocoevalcap_toy_captions(tmp_path) -> None:
    from butd.datasets.toy import ToyConfig, make_toy_world

    make_toy_world(tmp_path, ToyConfig(n_images=40, seed=3))
    images = json.loads((tmp_path / "dataset_coco.json").read_text())["images"]
    refs = {im["cocoid"]: [" ".join(s["tokens"]) for s in im["sentences"][1:]] for im in images}
    cands = {im["cocoid"]: " ".join(im["sentences"][0]["tokens"]) for im in images}
    # a shuffled candidate set too: mostly wrong captions
    keys = list(cands)
    shuffled = dict(zip(keys, [cands[k] for k in keys[1:] + keys[:1]], strict=True))
    scorer = CiderD(refs)
    for c in (cands, shuffled):
        mean_ref, per_ref = _reference(c, refs)
        mean, per = scorer.score(c, refs)
        assert abs(mean - mean_ref) < 1e-6
        np.testing.assert_allclose(per, per_ref, atol=1e-6, rtol=0)
    assert scorer.score(cands, refs)[0] > scorer.score(shuffled, refs)[0]


@pytest.mark.parametrize("chunk_docs", [1, 7, 10_000])
def test_document_frequencies_count_documents_whatever_the_chunk(chunk_docs: int) -> None:
    """df(g) = the number of documents with n-gram g in any reference, counted chunk by chunk (memory)."""
    _, refs = _random_sents(4, 60)
    docs = list(refs.values())
    arrays = CiderD(docs, chunk_docs=chunk_docs).to_arrays()
    words = arrays["words"].tolist()
    got = {}
    for key, df in zip(arrays["df_keys"].tolist(), arrays["df_vals"].tolist(), strict=True):
        ids = []
        while key:
            key, digit = divmod(key, 1 << 16)
            ids.append(digit)
        got[tuple(words[i - 1] for i in reversed(ids))] = df
    want = Counter(g for doc in docs for g in {tuple(t[i:i + k]) for s in doc for t in [s.split()]
                                               for k in range(1, 5) for i in range(len(t) - k + 1)})
    assert got == want
    # the word table (ids by first appearance) and every setting are the same as in one pass
    one = CiderD(docs, chunk_docs=len(docs)).to_arrays()
    for name in one:
        np.testing.assert_array_equal(arrays[name], one[name])


def test_fixed_corpus_and_lists() -> None:
    corpus = [["a red circle", "a red ball"], ["two blue squares", "blue squares"], ["a star"]]
    scorer = CiderD(corpus)
    mean, per = scorer.score_lists(["a red circle", "unseen words here"], [["a red circle"], ["x y"]])
    assert per[0] > 0 and per[1] == 0.0 and mean == pytest.approx(per.mean())
    # list and mapping interfaces agree
    _, p2 = scorer.score({"a": "a red circle", "b": "unseen words here"},
                         {"a": ["a red circle"], "b": ["x y"]})
    np.testing.assert_array_equal(per, p2)
    # the corpus is not changed by scoring unseen words
    assert scorer.score_lists(["a star"], [["a star"]]) == scorer.score_lists(["a star"], [["a star"]])


def test_bad_inputs() -> None:
    scorer = CiderD([["a b"]])
    with pytest.raises(ValueError):
        scorer.score_lists(["a"], [[]])
    with pytest.raises(ValueError):
        scorer.score_lists(["a"], [["a"], ["b"]])
    with pytest.raises(KeyError):
        scorer.score({"x": "a"}, {"y": ["a"]})
    with pytest.raises(ValueError):
        CiderD([])
    assert scorer.score_lists([], []) == (0.0, pytest.approx(np.zeros(0)))


def test_empty_sentences_match_reference() -> None:
    refs = {0: ["", "a b"], 1: [""], 2: ["c"]}
    cands = {0: "", 1: "a", 2: "c"}
    mean_ref, per_ref = _reference(cands, refs)
    mean, per = CiderD(refs).score(cands, refs)
    np.testing.assert_allclose(per, per_ref, atol=1e-12)
    assert CiderD([[""]]).score_lists(["a"], [["a"]])[0] >= 0.0
