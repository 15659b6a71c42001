"""The official VQA accuracy (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py).

Facts taken from that file (Python 3 version, commit c4e6a0e): the punctuation list, the two regexes,
the number-word map, the articles and the contraction table, and the evaluation rules. Two versions of the
rules exist (``VERSIONS``):

``"2017"`` (the file as of commit 458a8b2, 2016-10, used for the 2017 challenge and in the papers):

* a predicted answer has "\\n"/"\\t" turned into spaces, is stripped, then punctuation-processed, then
  lower-cased, number words mapped to digits, articles dropped and contractions restored;
* the 10 human answers get *only* punctuation processing, and only when they are not all identical
  (they are never lower-cased);

``"master"`` (commit a013f00, 2021-03, "Fixed processing answers bug"):

* human and predicted answers both have "\\n"/"\\t" turned into spaces and are stripped;
* when the 10 human answers are not all identical, *both* sides get the punctuation and the
  digit/article/contraction processing; when they are all identical, *neither* side is processed further;

and in both: accuracy = mean over the 10 leave-one-out subsets of min(1, #matches among the other 9 / 3),
reported in percent rounded to 2 decimals.

Regex behaviour kept on purpose: the period pattern's "(?!<=\\d)" is a look-*ahead* typo, so a period is
dropped whenever it is not followed by a digit ("1.5" keeps it, "5." loses it), and the official call passes
``re.UNICODE`` (32) as the ``count`` argument, so at most 32 periods are removed.
"""

from __future__ import annotations

import functools
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from butd.registry import Entry, Registry

__all__ = [
    "ANSWER_TYPES",
    "ARTICLES",
    "CONTRACTIONS",
    "VERSIONS",
    "NUMBER_WORDS",
    "PUNCTUATION",
    "answer_accuracy",
    "leave_one_out_score",
    "normalize_answer",
    "process_digit_article",
    "process_punctuation",
    "question_type_rows",
    "question_types",
    "vqa_accuracy",
]

ANSWER_TYPES = ("yes/no", "number", "other")
PUNCTUATION: tuple[str, ...] = (
    ";",
    "/",
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
)
NUMBER_WORDS: dict[str, str] = {
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
ARTICLES = frozenset({"a", "an", "the"})
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_MAX_PERIODS = int(re.UNICODE)  # the official code passes re.UNICODE where sub() expects `count`

# Unpunctuated form -> official form. Keys with capitals can never match (answers are lower-cased first);
# they are kept because the official table has them.
CONTRACTIONS: dict[str, str] = dict(
    pair.split("=")
    for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd
howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've
it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've
mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've
oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've
shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've
somebodyll=somebody'll somebodys=somebody's someoned=someone'd someoned've=someone'd've
someone'dve=someone'd've someonell=someone'll someones=someone's somethingd=something'd
somethingd've=something'd've something'dve=something'd've somethingll=something'll thats=that's
thered=there'd thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas wasnt=wasn't
wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're whats=what's
whatve=what've whens=when's whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've
who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't
wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all
yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've
youd=you'd youd've=you'd've you'dve=you'd've youll=you'll youre=you're youve=you've
""".split()
)


@functools.lru_cache(maxsize=1 << 17)  # pure; VQA v2 repeats ~100k answer strings 6.6M times
def process_punctuation(text: str) -> str:
    """Official punctuation step: each mark is deleted if it touches a space (or the text has a
    digit,digit comma), otherwise replaced by a space; then periods not followed by a digit go."""
    glued_number = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        delete = glued_number or (mark + " ") in text or (" " + mark) in text
        out = out.replace(mark, "" if delete else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS)


def process_digit_article(text: str) -> str:
    """Official word step: lower-case, number words -> digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Full normalisation the official code applies to a *predicted* answer."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def leave_one_out_score(matches: Sequence[bool]) -> float:
    """Mean over leave-one-out subsets of min(1, matches among the others / 3).

    With 10 answers and m matches this is 0, .3, .6, .9, 1 for m = 0, 1, 2, 3, >=4.
    """
    return _leave_one_out(tuple(map(bool, matches)))


@functools.lru_cache(maxsize=4096)  # 1,024 patterns of 10 answers; the float sum keeps their order
def _leave_one_out(matches: tuple[bool, ...]) -> float:
    total_matches = sum(bool(m) for m in matches)
    accs = [min(1.0, float(total_matches - int(bool(m))) / 3) for m in matches]
    return float(sum(accs)) / len(accs)


def _reference_answers(human: Sequence[str]) -> list[str]:
    """Human answers as the 2017 official code compares them (the all-identical quirk included)."""
    return [process_punctuation(a) for a in human] if len(set(human)) > 1 else list(human)


def _white(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _compared_2017(predicted: str, human: Sequence[str]) -> tuple[str, list[str]]:
    return normalize_answer(predicted), _reference_answers(human)


def _compared_master(predicted: str, human: Sequence[str]) -> tuple[str, list[str]]:
    refs, pred = [_white(a) for a in human], _white(predicted)
    if len(set(refs)) > 1:
        refs = [process_digit_article(process_punctuation(a)) for a in refs]
        pred = process_digit_article(process_punctuation(pred))
    return pred, refs


# version -> (predicted, human answers) -> (the compared prediction, the compared human answers)
VERSIONS = Registry("VQA evaluator version", {
    "2017": Entry(None, _compared_2017, "the official evaluator as of the 2017 challenge (papers' numbers)"),
    "master": Entry(None, _compared_master, "the official evaluator's master (2021 fix of the answer processing)"),
})


def _compare(version: str) -> Callable[[str, Sequence[str]], tuple[str, list[str]]]:
    return VERSIONS[version]


def answer_accuracy(predicted: str, human_answers: Sequence[str], version: str = "2017") -> float:
    """Official accuracy in [0, 1] of one predicted answer against the (raw) human answers."""
    pred, refs = _compare(version)(predicted, human_answers)
    return leave_one_out_score([ref == pred for ref in refs])


def soft_scores(human_answers: Sequence[str]) -> dict[str, float]:
    """Official accuracy of every answer string that could score > 0, keyed by its compared form."""
    refs = _reference_answers(human_answers)
    counts = Counter(refs)
    return {ans: leave_one_out_score([r == ans for r in refs]) for ans in counts}


def _annotation_list(annotations: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(annotations, Mapping):
        return list(annotations["annotations"])
    return list(annotations)


def _pct(x: float) -> float:
    return round(100.0 * x, 2)


def vqa_accuracy(
    predictions: Mapping[int, str],
    annotations: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    *,
    question_ids: Iterable[int] | None = None,
    version: str = "2017",
) -> dict[str, Any]:
    """Official VQA accuracy of ``predictions`` (question id -> answer) against VQA v2 annotations.

    ``annotations`` is the annotation file's dict or its "annotations" list. Every evaluated question
    needs a prediction (KeyError naming it otherwise); ``question_ids`` restricts the evaluated set;
    ``version`` picks the official rules (a key of :data:`VERSIONS`).
    Returns percentages rounded like the official code: {"overall", "per_answer_type",
    "per_question_type", "per_question": {qid: acc}}.
    """
    _compare(version)
    anns = {int(a["question_id"]): a for a in _annotation_list(annotations)}
    qids = list(anns) if question_ids is None else [int(q) for q in question_ids]
    if not qids:
        raise ValueError("no questions to evaluate")
    missing = [q for q in qids if q not in predictions]
    if missing:
        raise KeyError(f"{len(missing)} question(s) have no prediction, e.g. question_id {missing[0]}")
    per_question: dict[int, float] = {}
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    by_question_type: dict[str, list[float]] = defaultdict(list)
    overall: list[float] = []
    for qid in qids:
        if qid not in anns:
            raise KeyError(f"question_id {qid} is not in the annotations")
        ann = anns[qid]
        acc = answer_accuracy(predictions[qid], [a["answer"] for a in ann["answers"]], version)
        overall.append(acc)
        by_answer_type[ann["answer_type"]].append(acc)
        by_question_type[ann["question_type"]].append(acc)
        per_question[qid] = _pct(acc)
    return {
        "overall": _pct(float(sum(overall)) / len(overall)),
        "per_answer_type": {k: _pct(float(sum(v)) / len(v)) for k, v in by_answer_type.items()},
        "per_question_type": {k: _pct(float(sum(v)) / len(v)) for k, v in by_question_type.items()},
        "per_question_type_count": {k: len(v) for k, v in by_question_type.items()},
        "per_question": per_question,
        "num_questions": len(overall),
        "evaluator": version,
    }


def question_types() -> tuple[str, ...]:
    """The official evaluator's 65 VQA v2 question types (GT-Vision-Lab/VQA
    ``QuestionTypes/mscoco_question_types.txt``, kept in ``lists/vqa_question_types.json``), in its order."""
    import json
    from pathlib import Path

    path = Path(__file__).with_name("lists") / "vqa_question_types.json"
    return tuple(json.loads(path.read_text(encoding="utf-8"))["types"])


def question_type_rows(result: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """(question type, accuracy %, questions) of a :func:`vqa_accuracy` result: the official types in the
    official order, then any other type found in the annotations, alphabetically."""
    acc, counts = result["per_question_type"], result.get("per_question_type_count", {})
    official = [t for t in question_types() if t in acc]
    other = sorted(set(acc) - set(official))
    return [(t, acc[t], int(counts.get(t, 0))) for t in official + other]
