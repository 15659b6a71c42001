"""caption_metrics wraps pycocoevalcap faithfully and reports SPICE skipping in one line."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("pycocoevalcap")

from butd.evaluate.caption_metrics import CocoScorers, caption_metrics, spice_unavailable_reason  # noqa: E402

REFS = {
    1: ["A red circle on the grass.", "a red ball on a grassy field", "One red circle, on grass"],
    2: ["Two blue squares in the sky", "two blue squares against the sky", "a pair of blue squares"],
    3: ["a yellow star on the sand", "one yellow star on a sandy background"],
}
GOOD = {1: "a red circle on the grass", 2: "two blue squares in the sky", 3: "a yellow star on the sand"}
BAD = {1: "two blue squares in the sky", 2: "a yellow star on the sand", 3: "a red circle on the grass"}


def test_no_java_needed_when_pre_tokenised() -> None:
    from pycocoevalcap.bleu.bleu import Bleu

    scorers = CocoScorers.build(meteor=False, spice=False)
    refs = {k: [r.lower().replace(",", "").replace(".", "") for r in v] for k, v in REFS.items()}
    out = caption_metrics(GOOD, refs, scorers=scorers, tokenizer=None, per_item=True)
    ref_bleu, _ = Bleu(4).compute_score(refs, {k: [v] for k, v in GOOD.items()}, verbose=0)
    for i in range(4):
        assert out[f"BLEU-{i + 1}"] == pytest.approx(ref_bleu[i])
    bad = caption_metrics(BAD, refs, scorers=scorers, tokenizer=None)
    for key in ("BLEU-4", "ROUGE-L", "CIDEr"):
        assert out[key] > bad[key]
    assert len(out["per_item"]["CIDEr"]) == 3 and out["n"] == 3
    assert "SPICE" not in out


@pytest.mark.skipif(shutil.which("java") is None, reason="needs java for PTB tokenizer and METEOR")
def test_full_metrics_with_java(caplog) -> None:
    out = caption_metrics(GOOD, REFS)
    for key in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert 0.0 <= out[key] <= 10.0, key
    assert out["BLEU-1"] > 0.8 and out["METEOR"] > 0.3
    reason = spice_unavailable_reason()
    if reason is None:
        assert "SPICE" in out
    else:
        assert out["skipped"]["SPICE"] == reason and "\n" not in reason and "SPICE skipped" in reason


def test_bad_inputs() -> None:
    scorers = CocoScorers.build(meteor=False, spice=False)
    with pytest.raises(ValueError):
        caption_metrics({}, REFS, scorers=scorers, tokenizer=None)
    with pytest.raises(KeyError):
        caption_metrics({9: "x"}, REFS, scorers=scorers, tokenizer=None)
    with pytest.raises(ValueError):
        caption_metrics({1: "x"}, {1: []}, scorers=scorers, tokenizer=None)
