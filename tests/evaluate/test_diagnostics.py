"""Caption diagnostics count exactly the captions with each defect."""

import pytest

from butd.evaluate.diagnostics import BAD_ENDINGS, caption_diagnostics, words_of
from butd.models.decoding import CAFFE_ALLOWED_REPEATS


def test_each_defect_is_counted():
    caps = {
        1: "a dog on a bed",  # "a" repeats, allowed
        2: "a dog and a dog",  # "dog" repeats
        3: "a man riding a",  # ends on an article
        4: "A red circle.",  # copied from training (case and punctuation ignored)
        5: "",
    }
    d = caption_diagnostics(caps, ["a red circle", "a blue square"], allowed_repeats=CAFFE_ALLOWED_REPEATS)
    assert d["repeat"] == pytest.approx(1 / 5) and d["examples"]["repeat"] == [2]
    assert d["bad_ending"] == pytest.approx(1 / 5) and d["examples"]["bad_ending"] == [3]
    assert d["in_training"] == pytest.approx(1 / 5) and d["examples"]["in_training"] == [4]
    assert d["empty"] == pytest.approx(1 / 5)
    assert d["mean_length"] == pytest.approx((5 + 5 + 4 + 3 + 0) / 5)
    assert d["vocabulary"] == len({"a", "dog", "on", "bed", "and", "man", "riding", "red", "circle"})
    assert caption_diagnostics(caps, allowed_repeats=CAFFE_ALLOWED_REPEATS)["in_training"] is None
    token_lists = caption_diagnostics({1: "a red circle"}, [["A", "red", "circle"]], allowed_repeats=())
    assert token_lists["in_training"] == 1.0


def test_lists_and_their_sources():
    assert {"a", "the", "of", "on", "with"} <= set(BAD_ENDINGS) and "dog" not in BAD_ENDINGS
    assert caption_diagnostics({1: "a dog on the grass"}, allowed_repeats=())["repeat"] == 0.0
    assert caption_diagnostics({1: "the dog and the cat"}, allowed_repeats=())["repeat"] == 1.0
    caffe = caption_diagnostics({1: "the dog and the cat"}, allowed_repeats=CAFFE_ALLOWED_REPEATS)
    assert caffe["repeat"] == 0.0  # "the" is in Caffe's allowed list
    assert "the" in CAFFE_ALLOWED_REPEATS and words_of("A dog's bone.") == ("a", "dogs", "bone")
    with pytest.raises(ValueError):
        caption_diagnostics({}, allowed_repeats=())
