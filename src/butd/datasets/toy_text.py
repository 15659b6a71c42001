"""Caption, question and answer templates for the toy world (see :mod:`butd.datasets.toy`)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
MAX_CAPTION_WORDS = 16
MAX_WRONG_ANSWERS = 4  # the correct answer always keeps >= 6 of the 10 votes

# Each background has a few phrasings; none of them uses a colour word from the palette.
_BG_PHRASES = {
    "gray": ("on a gray background", "on a grey background", "on a plain gray background"),
    "sand": ("on a sandy background", "on the sand", "on a sandy surface"),
    "grass": ("on a grassy background", "on the grass", "on a grassy field"),
    "sky": ("against the sky", "in the sky", "against a cloudy sky"),
}


@dataclass(frozen=True)
class ToyObject:
    """The view of one object that the text templates need."""

    shape: str
    colour: str
    box: tuple[float, float, float, float]

    @property
    def cx(self) -> float:
        return (self.box[0] + self.box[2]) / 2.0


@dataclass(frozen=True)
class ToyQuestion:
    """One templated question with its canonical answer."""

    question: str
    question_type: str
    answer_type: str  # "yes/no" | "number" | "other"
    answer: str
    kind: str  # "colour" | "shape" | "number" | "yesno": which distractors are plausible


def number_word(n: int) -> str:
    """English word for small counts, digits beyond ten."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def _np(o: ToyObject) -> str:
    article = "an" if o.colour[0] in "aeiou" else "a"
    return f"{article} {o.colour} {o.shape}"


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _pick(seq: Sequence[str], rng: np.random.Generator) -> str:
    return seq[int(rng.integers(len(seq)))]


def _counted(counter: Counter[str], noun: str | None, rng: np.random.Generator) -> str:
    """'two circles and a star' (noun None) or 'two red shapes and one blue shape'."""
    parts = []
    for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
        head = _pick(("a", "one"), rng) if n == 1 else number_word(n)
        parts.append(f"{head} {plural(key, n)}" if noun is None else f"{head} {key} {plural(noun, n)}")
    return _join(parts)


def _position(o: ToyObject, width: int) -> str:
    if o.cx < width / 3:
        return "left"
    return "right" if o.cx > 2 * width / 3 else "middle"


def caption_candidates(
    objs: Sequence[ToyObject], background: str, width: int, rng: np.random.Generator
) -> list[list[str]]:
    """Caption candidates grouped by template family (listing, counting, spatial, grouping)."""
    objs = sorted(objs, key=lambda o: o.cx)
    n = len(objs)
    bg = _pick(_BG_PHRASES[background], rng)
    nw = number_word(n)
    listing, counting, spatial, grouping = [], [], [], []
    if n <= 3:
        listing.append(f"{_join([_np(o) for o in objs])} {bg}")
        listing.append(f"an image of {_join([_np(o) for o in objs])}")
    else:
        listing.append(f"{nw} shapes including {_np(objs[0])} and {_np(objs[-1])}")
        listing.append(f"{_join([_np(o) for o in objs])}")
    if n == 1:
        counting += [f"a single {objs[0].colour} {objs[0].shape} {bg}", f"one shape {bg}",
                     "there is only one shape in the image"]
    else:
        counting += [f"{nw} shapes {bg}", f"there are {nw} shapes {bg}", f"a picture with {nw} shapes"]
    if n == 1:
        pos = _position(objs[0], width)
        where = "in the middle" if pos == "middle" else f"on the {pos}"
        spatial += [f"{_np(objs[0])} {where} of the image",
                    f"the {objs[0].colour} {objs[0].shape} is {where}"]
    else:
        i = int(rng.integers(n - 1))
        a, b = objs[i], objs[i + 1]
        if b.cx - a.cx > 0.1 * width:
            spatial += [f"{_np(a)} to the left of {_np(b)}", f"{_np(b)} to the right of {_np(a)}"]
        spatial.append(f"there is {_np(a)} next to {_np(b)}")
        spatial.append(f"the leftmost shape is {_np(objs[0])}")
        if n == 2:
            spatial.append(f"{_np(objs[0])} on the left and {_np(objs[1])} on the right")
    grouping.append(f"{_counted(Counter(o.shape for o in objs), None, rng)} {bg}")
    grouping.append(f"{_counted(Counter(o.colour for o in objs), 'shape', rng)}")
    return [[c for c in fam if len(c.split()) <= MAX_CAPTION_WORDS]
            for fam in (listing, counting, spatial, grouping)]


def make_captions(
    objs: Sequence[ToyObject], background: str, width: int, rng: np.random.Generator, n: int = 5
) -> list[str]:
    """``n`` distinct captions: one per template family first, then the leftovers, in random order."""
    families = caption_candidates(objs, background, width, rng)
    chosen: list[str] = []
    leftovers: list[str] = []
    for fam in families:
        order = [fam[int(k)] for k in rng.permutation(len(fam))]
        if order:
            chosen.append(order[0])
        leftovers += order[1:]
    for k in rng.permutation(len(leftovers)):
        if len(chosen) >= n:
            break
        if leftovers[int(k)] not in chosen:
            chosen.append(leftovers[int(k)])
    if len(chosen) < n:  # cannot happen with the templates above, kept as a guard
        raise RuntimeError(f"only {len(chosen)} captions for {objs}")
    out = []
    for cap in chosen[:n]:
        cap = cap[0].upper() + cap[1:]
        out.append(cap + "." if rng.random() < 0.5 else cap)
    return out


def tokenize(raw: str) -> list[str]:
    """Karpathy-style tokens: lowercase, punctuation stripped, whitespace split."""
    return re.sub(r"[^\w\s]", "", raw.lower()).split()


def _interleave(groups: list[list[ToyQuestion]], rng: np.random.Generator) -> list[ToyQuestion]:
    groups = [[g[int(k)] for k in rng.permutation(len(g))] for g in groups if g]
    start = int(rng.integers(len(groups))) if groups else 0
    groups = groups[start:] + groups[:start]
    out: list[ToyQuestion] = []
    while any(groups):
        for g in groups:
            if g:
                out.append(g.pop(0))
    return out


def make_questions(
    objs: Sequence[ToyObject], colours: Sequence[str], shapes: Sequence[str], rng: np.random.Generator
) -> list[ToyQuestion]:
    """4-6 questions: one 'yes' and one 'no' existence question, a total count, and a mix of others."""
    by_shape = Counter(o.shape for o in objs)
    by_colour = Counter(o.colour for o in objs)
    present = {(o.colour, o.shape) for o in objs}
    yes_c, yes_s = sorted(present)[int(rng.integers(len(present)))]
    absent = [(c, s) for c in colours for s in shapes if (c, s) not in present]
    near = [(c, s) for c, s in absent if c in by_colour or s in by_shape]
    pool = near if near and rng.random() < 0.7 else absent
    no_c, no_s = pool[int(rng.integers(len(pool)))]

    def yn(c: str, s: str, ans: str) -> ToyQuestion:
        art = "an" if c[0] in "aeiou" else "a"
        return ToyQuestion(f"is there {art} {c} {s}?", "is there a", "yes/no", ans, "yesno")

    def count(q: str, n: int) -> ToyQuestion:
        return ToyQuestion(q, "how many", "number", str(n), "number")

    base = [yn(yes_c, yes_s, "yes"), yn(no_c, no_s, "no"), count("how many shapes are there?", len(objs))]
    colour_qs = [ToyQuestion(f"what color is the {s}?", "what color is the", "other", o.colour, "colour")
                 for o in objs for s in [o.shape] if by_shape[s] == 1]
    shape_qs = [ToyQuestion(f"what shape is the {o.colour} object?", "what shape is the", "other", o.shape,
                            "shape") for o in objs if by_colour[o.colour] == 1]
    count_qs = [count(f"how many {c} shapes are there?", n) for c, n in sorted(by_colour.items())]
    count_qs += [count(f"how many {plural(s, 2)} are there?", n) for s, n in sorted(by_shape.items())]
    missing = [c for c in colours if c not in by_colour]
    if missing:
        count_qs.append(count(f"how many {_pick(missing, rng)} shapes are there?", 0))
    k = int(rng.integers(4, 7))
    extra = _interleave([colour_qs, shape_qs, count_qs], rng)[: k - len(base)]
    qs = base + extra
    return [qs[int(i)] for i in rng.permutation(len(qs))]


def normalize_answer(ans: str) -> str:
    """Light version of the VQA answer normalisation (case, punctuation, articles, number words)."""
    words = re.sub(r"[^\w\s]", "", ans.lower()).split()
    words = [str(NUMBER_WORDS.index(w)) if w in NUMBER_WORDS else w
             for w in words if w not in ("a", "an", "the")]
    return " ".join(words)


def _wrong(q: ToyQuestion, colours: Sequence[str], shapes: Sequence[str], rng: np.random.Generator) -> str:
    if q.kind == "yesno":
        return "no" if q.answer == "yes" else "yes"
    if q.kind == "number":
        n = int(q.answer)
        return str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)
    options = [x for x in (colours if q.kind == "colour" else shapes) if x != q.answer]
    return _pick(options, rng)


def _variant(ans: str, kind: str, rng: np.random.Generator) -> str:
    """A surface variant that the official VQA normalisation maps back to ``ans``."""
    if kind == "number":
        return number_word(int(ans))
    forms = [ans.capitalize(), ans + "."]
    if kind == "shape":
        forms.append(f"a {ans}")
    return _pick(forms, rng)


def make_answers(
    q: ToyQuestion, colours: Sequence[str], shapes: Sequence[str], rng: np.random.Generator, noise: float
) -> tuple[list[dict], str]:
    """Ten human-like answers and the multiple-choice (most common, normalised) answer."""
    wrong = rng.random(10) < noise
    wrong[np.flatnonzero(wrong)[MAX_WRONG_ANSWERS:]] = False
    answers = []
    for i in range(10):
        if wrong[i]:
            text, conf = _wrong(q, colours, shapes, rng), _pick(("maybe", "no"), rng)
        else:
            text = _variant(q.answer, q.kind, rng) if rng.random() < 0.15 else q.answer
            conf = "yes" if rng.random() < 0.85 else "maybe"
        answers.append({"answer": text, "answer_confidence": conf, "answer_id": i + 1})
    votes = Counter(normalize_answer(a["answer"]) for a in answers)
    return answers, votes.most_common(1)[0][0]
