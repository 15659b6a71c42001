"""Official VQA accuracy: normalisation rules, the leave-one-out average, quirks, and a slow reference."""

from __future__ import annotations

import random
import re

import pytest

from butd.evaluate.vqa_accuracy import (
    CONTRACTIONS,
    answer_accuracy,
    leave_one_out_score,
    normalize_answer,
    process_punctuation,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),
        ("two dogs", "2 dogs"),
        ("a dog", "dog"),
        ("The Cat", "cat"),
        ("an apple a day", "apple day"),
        ("yes!", "yes"),
        ("hot-dog", "hot dog"),
        ("black, white", "black white"),
        ("1,000", "1000"),
        ("(left)", "left"),
        ("x/y", "x y"),
        ("what?", "what"),
        ("tv's", "tv's"),
        ("red:blue", "red:blue"),
        ("dont", "don't"),
        ("isnt", "isn't"),
        ("Im", "im"),
        ("cant stop", "can't stop"),
        ("1.5", "1.5"),
        ("0.75", "0.75"),
        (".5", ".5"),
        ("5.", "5"),
        ("yes.", "yes"),
        ("mr. smith", "mr smith"),
        ("  Yes\t", "yes"),
        ("line\nbreak", "line break"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_period_removal_is_capped_at_32_like_the_official_call() -> None:
    assert process_punctuation("." * 40) == "." * 8


def test_leave_one_out_values() -> None:
    got = [leave_one_out_score([True] * m + [False] * (10 - m)) for m in range(11)]
    assert got == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_leave_one_out_is_exact_for_every_pattern_of_matches() -> None:
    """Bit-equal to the official loop (vqaEval.py: per left-out answer min(1, matches / 3), summed in answer
    order, / 10) for all 1,024 patterns, asked in two orders; the sum's order matters (m = 2 gives three
    different floats), so a result memoised per pattern must never be reused for another pattern."""
    import itertools

    patterns = list(itertools.product([False, True], repeat=10)) + [(True,), (False, True, True)]
    for order in (patterns, patterns[::-1]):
        for p in order:
            accs = [min(1.0, float(sum(p) - int(b)) / 3) for b in p]
            assert leave_one_out_score(list(p)) == float(sum(accs)) / len(accs), p
    assert len({leave_one_out_score(p) for p in patterns if sum(p) == 2 and len(p) == 10}) == 3


def test_hand_computed_example() -> None:
    # 2 x "red", 8 x "blue": "red" matches 2 -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6; "blue" -> 1; "green" -> 0
    anns = [
        {
            "question_id": 1,
            "question_type": "what color",
            "answer_type": "other",
            "answers": [{"answer": a} for a in ["red"] * 2 + ["blue"] * 8],
        },
        {
            "question_id": 2,
            "question_type": "how many",
            "answer_type": "number",
            "answers": [{"answer": a} for a in ["2"] * 3 + ["two"] * 2 + ["3"] * 5],
        },
    ]
    # q2: prediction "Two" -> "2"; GT "two" is only punctuation-processed (no digits), so 3 matches -> 0.9
    res = vqa_accuracy({1: "Red", 2: "Two"}, {"annotations": anns})
    assert res["per_question"] == {1: 60.0, 2: 90.0}
    assert res["overall"] == 75.0
    assert res["per_answer_type"] == {"other": 60.0, "number": 90.0}
    assert res["per_question_type"] == {"what color": 60.0, "how many": 90.0}
    assert vqa_accuracy({1: "blue", 2: "3"}, anns)["overall"] == 100.0
    assert vqa_accuracy({1: "green", 2: "4"}, anns)["overall"] == 0.0


def test_ground_truth_normalised_only_when_answers_differ() -> None:
    assert answer_accuracy("red", ["red."] * 10) == 0.0  # all identical: left as is
    assert answer_accuracy("red", ["red."] * 9 + ["blue"]) == 1.0  # differ: trailing periods stripped
    assert answer_accuracy("red", ["Red"] * 9 + ["blue"]) == 0.0  # ground truth is never lower-cased


def test_missing_prediction_is_an_error() -> None:
    anns = [
        {"question_id": 7, "question_type": "x", "answer_type": "other", "answers": [{"answer": "a"}] * 10}
    ]
    with pytest.raises(KeyError, match="7"):
        vqa_accuracy({}, anns)


# ------------------------------------------------------------ slow reference: the official loop, transcribed
_REF_PUNCT = [
    ";",
    r"/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_REF_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_REF_COMMA = re.compile(r"(\d)(\,)(\d)")
_REF_MAP = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}


def _ref_punct(in_text: str) -> str:
    out_text = in_text
    for p in _REF_PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (re.search(_REF_COMMA, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return _REF_PERIOD.sub("", out_text, re.UNICODE)


def _ref_digit_article(in_text: str) -> str:
    out = []
    for word in in_text.lower().split():
        word = _REF_MAP.setdefault(word, word)
        if word not in ["a", "an", "the"]:
            out.append(word)
    for i, word in enumerate(out):
        if word in CONTRACTIONS:
            out[i] = CONTRACTIONS[word]
    return " ".join(out)


def _reference(preds: dict[int, str], anns: list[dict], raw: dict | None = None) -> tuple[float, dict[int, float]]:
    acc_qa, per_q = [], {}
    for ann in anns:
        gts = [dict(a) for a in ann["answers"]]
        res = preds[ann["question_id"]].replace("\n", " ").replace("\t", " ").strip()
        res = _ref_digit_article(_ref_punct(res))
        if len({a["answer"] for a in gts}) > 1:
            for a in gts:
                a["answer"] = _ref_punct(a["answer"])
        gt_acc = []
        for datum in gts:
            others = [item for item in gts if item != datum]
            matching = [item for item in others if item["answer"] == res]
            gt_acc.append(min(1, float(len(matching)) / 3))
        avg = float(sum(gt_acc)) / len(gt_acc)
        acc_qa.append(avg)
        per_q[ann["question_id"]] = round(100 * avg, 2)
        if raw is not None:
            raw[ann["question_id"]] = avg
    return round(100 * float(sum(acc_qa)) / len(acc_qa), 2), per_q


_PIECES = [
    "red",
    "Red",
    "red.",
    "two",
    "2",
    "2.",
    "1.5",
    "1,000",
    "1000",
    "a",
    "the",
    "dog",
    "dogs",
    "dont",
    "don't",
    "yes",
    "Yes!",
    "no",
    "hot-dog",
    "hot dog",
    "(left)",
    "left",
    "none",
    "0",
    "isnt",
    "mr.",
    "x/y",
    "black, white",
    "black white",
    " ",
    "?",
    "Im",
    "it's",
    "tv's",
]


def _random_answer(rng: random.Random) -> str:
    return " ".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 3)))


def test_matches_transcribed_official_algorithm() -> None:
    rng = random.Random(0)
    anns, preds = [], {}
    for qid in range(600):
        pool = [_random_answer(rng) for _ in range(rng.randint(1, 4))]
        answers = [
            {"answer": rng.choice(pool), "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)
        ]
        anns.append(
            {
                "question_id": qid,
                "question_type": "t",
                "answer_type": rng.choice(["yes/no", "other"]),
                "answers": answers,
            }
        )
        preds[qid] = rng.choice([*pool, _random_answer(rng)])
    overall, per_q = _reference(preds, anns)
    ours = vqa_accuracy(preds, anns)
    assert ours["per_question"] == per_q
    assert ours["overall"] == overall
    assert any(0 < v < 100 for v in per_q.values()) and any(v == 100 for v in per_q.values())


# --- the two official versions: cases derived from the rules of vqaEval.py at 458a8b2 (2017) and a013f00 (master)
VERSION_CASES = [
    # (prediction, 10 human answers, accuracy 2017, accuracy master)
    ("Yes", ["yes"] * 10, 1.0, 0.0),  # all identical: master does not lower-case the prediction
    ("two", ["2"] * 10, 1.0, 0.0),  # ... nor map number words
    ("two", ["two"] * 10, 0.0, 1.0),  # 2017 maps the prediction to "2" but leaves identical answers alone
    ("yes.", ["yes"] * 10, 1.0, 0.0),  # ... nor strip punctuation
    ("yes", ["yes "] * 10, 0.0, 1.0),  # master strips the human answers too
    ("2", ["two"] * 5 + ["2"] * 2 + ["3"] * 3, 0.6, 1.0),  # master normalises mixed human answers fully
    ("red", ["Red"] * 3 + ["red"] * 2 + ["blue"] * 5, 0.6, 1.0),  # ... lower-casing them
    ("dog", ["a dog"] * 4 + ["cat"] * 6, 0.0, 1.0),  # ... dropping articles
    ("dont", ["don't"] * 4 + ["no"] * 6, 1.0, 1.0),  # both: contraction restored on the prediction
    ("no", ["no"] * 2 + ["yes"] * 8, 0.6, 0.6),  # plain cases agree
]


@pytest.mark.parametrize(("pred", "human", "acc_2017", "acc_master"), VERSION_CASES)
def test_official_versions(pred: str, human: list[str], acc_2017: float, acc_master: float) -> None:
    from butd.evaluate.vqa_accuracy import answer_accuracy

    assert answer_accuracy(pred, human) == pytest.approx(acc_2017)  # 2017 is the default
    assert answer_accuracy(pred, human, "2017") == pytest.approx(acc_2017)
    assert answer_accuracy(pred, human, "master") == pytest.approx(acc_master)


def test_version_in_the_report_and_unknown_version() -> None:
    anns = [{"question_id": i, "question_type": "what", "answer_type": "other",
             "answers": [{"answer": a} for a in human]} for i, (_, human, _, _) in enumerate(VERSION_CASES)]
    preds = {i: case[0] for i, case in enumerate(VERSION_CASES)}
    for version, col in (("2017", 2), ("master", 3)):
        res = vqa_accuracy(preds, anns, version=version)
        expected = 100 * sum(case[col] for case in VERSION_CASES) / len(VERSION_CASES)
        assert res["overall"] == pytest.approx(round(expected, 2)) and res["evaluator"] == version
    with pytest.raises(ValueError, match="unknown VQA evaluator version"):
        vqa_accuracy(preds, anns, version="2019")


def test_per_question_type_matches_the_official_set_accuracy() -> None:
    """vqaEval.py (a013f00 and 458a8b2) appends each question's leave-one-out average to its question type's
    and answer type's lists and reports round(100 * mean, 2) per type (setAccuracy)."""
    from butd.evaluate.vqa_accuracy import question_type_rows, question_types

    types = question_types()
    assert len(types) == 65 and types[:3] == ("how many", "is the", "what") and types[-1] == "none of the above"
    rng = random.Random(1)
    anns, preds = [], {}
    for qid in range(300):
        pool = [_random_answer(rng) for _ in range(rng.randint(1, 3))]
        answers = [{"answer": rng.choice(pool), "answer_id": i + 1} for i in range(10)]
        qtype = rng.choice(["what color is the", "how many", "is there a", "what shape is the"])
        anns.append({"question_id": qid, "question_type": qtype, "answer_type": rng.choice(["yes/no", "other"]),
                     "answers": answers})
        preds[qid] = rng.choice([*pool, _random_answer(rng)])
    avg: dict[int, float] = {}
    _reference(preds, anns, raw=avg)
    by_q, by_a = {}, {}
    for ann in anns:  # the official lists (accQuesType, accAnsType) of per-question averages
        by_q.setdefault(ann["question_type"], []).append(avg[ann["question_id"]])
        by_a.setdefault(ann["answer_type"], []).append(avg[ann["question_id"]])
    ours = vqa_accuracy(preds, anns)
    assert ours["per_question_type"] == {k: round(100 * float(sum(v)) / len(v), 2) for k, v in by_q.items()}
    assert ours["per_answer_type"] == {k: round(100 * float(sum(v)) / len(v), 2) for k, v in by_a.items()}
    rows = question_type_rows(ours)
    assert [r[0] for r in rows] == ["how many", "what color is the", "is there a", "what shape is the"]
    assert sum(r[2] for r in rows) == 300 and rows[0][1] == ours["per_question_type"]["how many"]
