"""CHAIR object hallucination (Rohrbach et al., EMNLP 2018, "Object Hallucination in Image Captioning").

Definitions (the paper, section 2; LisaAnne/Hallucination ``utils/chair.py`` at 6e4d33c):

* an *object mention* is a caption word (or two-word phrase) in the word list; it counts as the list's
  object (its first word: the COCO category name for the shipped list);
* an image's *ground-truth objects* are the objects of its instance annotations plus every object its
  reference captions mention;
* a mention is *hallucinated* when its object is not among the image's ground-truth objects;
* CHAIR-i = hallucinated mentions / all mentions (repeats counted), CHAIR-s = captions with at least one
  hallucinated mention / all captions.

Object recall (not in the paper) = ground-truth objects that the caption mentions / ground-truth objects,
summed over images, against the same ground truth.

How a caption becomes mentions, as the reference does it: lower-case, tokenise (:func:`tokenize`, the
Penn-Treebank rules of ``nltk.word_tokenize`` that matter for words), singularise each token
(:func:`singular`), merge the listed two-word phrases left to right ("teddy bear", "baby bird" -> "bird"),
drop a word when its blocker is present ("seat" with "toilet": a toilet seat is not a chair), keep the words
in the list. The word list is data (``lists/chair_words.json``, format in :func:`load_chair_words`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from butd.errors import UserError

__all__ = ["COCO_WORDS", "ChairWords", "Mention", "chair", "ground_truth_objects", "load_chair_words",
           "load_instances", "singular", "suffix_singular", "tokenize"]

COCO_WORDS = Path(__file__).with_name("lists") / "chair_words.json"
FORMAT = "butd-chair-words"

# Plurals no suffix rule can undo; a word list's "forms" add to or override these.
IRREGULAR = {"men": "man", "women": "woman", "gentlemen": "gentleman", "policemen": "policeman",
             "policewomen": "policewoman", "firemen": "fireman", "fishermen": "fisherman",
             "businessmen": "businessman", "servicemen": "serviceman", "sportsmen": "sportsman",
             "horsemen": "horseman", "snowmen": "snowman", "workmen": "workman", "people": "person",
             "children": "child", "grandchildren": "grandchild", "mice": "mouse", "geese": "goose",
             "feet": "foot", "teeth": "tooth", "oxen": "ox", "knives": "knife", "wives": "wife", "lives": "life",
             "leaves": "leaf", "loaves": "loaf", "wolves": "wolf", "calves": "calf", "halves": "half",
             "shelves": "shelf", "scarves": "scarf", "shoes": "shoe", "toes": "toe",
             "canoes": "canoe"}
_KEEP_ENDINGS = ("ss", "us", "is")
_SIBILANT_ES = ("sses", "xes", "zzes", "ches", "shes", "oes")


def suffix_singular(token: str) -> str:
    """English suffix rules: dogs -> dog, ponies -> pony, benches -> bench, glasses -> glass, heroes -> hero;
    words of three letters or fewer and words ending in -ss, -us, -is are left alone."""
    if len(token) <= 3 or not token.isalpha() or token.endswith(_KEEP_ENDINGS):
        return token
    if token.endswith("ies") and len(token) > 4 and token[-4] not in "aeiou":
        return token[:-3] + "y"
    if token.endswith(_SIBILANT_ES):
        return token[:-2]
    return token[:-1] if token.endswith("s") else token


def singular(token: str, forms: Mapping[str, str] = IRREGULAR, known: Container[str] = ()) -> str:
    """The singular of a lower-case token: ``forms`` first; a token in ``known`` (the listed words) as it
    is; a compound of an irregular plural whose singular is listed (dobermen -> doberman); else the suffix
    rule, unless only the token minus its "s" (or the "es" of "-ses") is a listed word.

    ``known`` makes plurals of listed words ending in a vowel + s count (taxis -> taxi when "taxi" is
    listed, magpies -> magpie) while tennis stays tennis when "tenni" is not listed.
    """
    if token in forms:
        return forms[token]
    if token in known:
        return token
    for plural, single in IRREGULAR.items():  # compounds: dobermen -> doberman, grandchildren -> grandchild
        if token.endswith(plural) and token[:-len(plural)] + single in known:
            return token[:-len(plural)] + single
    rule = suffix_singular(token)
    if rule not in known and token.endswith("s"):
        for cand in (token[:-1], token[:-2] if token.endswith("ses") else ""):
            if cand in known:
                return cand
    return rule


_CLITIC = re.compile(r"^(.+?)('s|'m|'d|'re|'ve|'ll|n't|')$")
_TOKEN = re.compile(r"\.\.\.|\d+(?:[.,:]\d+)+|[\w'\-./]+|[^\w\s]")


def tokenize(caption: str) -> list[str]:
    """Lower-case word tokens with punctuation as separate tokens, split as the Penn Treebank tokenizer
    (``nltk.word_tokenize``) splits words.

    Hyphenated words and numbers stay whole ("hot-dog", "1,000", "5:30"), clitics split off ("man's" ->
    "man", "'s"), a word's final period splits off (sentence ends) unless the word has an inner period
    and is not the caption's last ("t.v."), and "..." is one token.
    """
    pieces = _TOKEN.findall(caption.lower())
    out: list[str] = []
    for n, piece in enumerate(pieces):
        stem = piece.rstrip(".") if len(piece) > 1 and piece != "..." else piece
        dots = len(piece) - len(stem)
        if dots and "." in stem and n + 1 < len(pieces) and dots < 3:
            stem, dots = piece, 0
        m = _CLITIC.match(stem)
        out += [m.group(1), m.group(2)] if m and m.group(1) != "'" else [stem]
        if dots:
            out.append("..." if dots >= 3 else ".")
    return out


@dataclass(frozen=True)
class Mention:
    """An object mention: tokens [start, end) of the caption, the word they count as, and its object."""

    word: str
    object: str
    start: int
    end: int


@dataclass(frozen=True)
class ChairWords:
    """A CHAIR vocabulary: word -> object, two-word phrases, singular forms, blockers, category names."""

    object_of: Mapping[str, str]
    phrases: Mapping[tuple[str, str], str] = field(default_factory=dict)
    forms: Mapping[str, str] = field(default_factory=lambda: dict(IRREGULAR))
    drop_with: Mapping[str, str] = field(default_factory=dict)
    categories: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def objects(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.object_of.values()))

    @cached_property
    def known(self) -> frozenset[str]:
        """Every single word a token can count as: listed words, phrase parts."""
        words = {w for w in self.object_of if " " not in w}
        return frozenset(words | {p for pair in self.phrases for p in pair})

    def mentions(self, tokens: Sequence[str]) -> list[Mention]:
        """The object mentions in ``tokens`` (lower-case, as :func:`tokenize` gives them), in order."""
        known = self.known
        words = [singular(t, self.forms, known) for t in tokens]
        merged: list[tuple[str, int, int]] = []
        i = 0
        while i < len(words):
            pair = (words[i], words[i + 1]) if i + 1 < len(words) else None
            if pair in self.phrases:
                merged.append((self.phrases[pair], i, i + 2))
                i += 2
            else:
                merged.append((words[i], i, i + 1))
                i += 1
        present = {w for w, _, _ in merged}
        return [Mention(w, self.object_of[w], s, e) for w, s, e in merged
                if w in self.object_of and self.drop_with.get(w) not in present]

    def caption_mentions(self, caption: str) -> list[Mention]:
        return self.mentions(tokenize(caption))

    def category_object(self, name: str, where: str, kind: str = "instance category") -> str:
        """The object an instance category name counts as (the ``categories`` map, else the word list)."""
        word = self.categories.get(name, name)
        if word not in self.object_of:
            raise UserError(f"{kind} {name!r} is not in the CHAIR word list ({self.source})", where,
                            "pass --chair-words FILE that lists it (or its 'categories' entry)", usage=True)
        return self.object_of[word]


def _bad_words(why: str, path: Any) -> UserError:
    return UserError(f"not a CHAIR word file: {why}", path,
                     f'give JSON {{"format": "{FORMAT}", "objects": [["object", "synonym", ...], ...]}} '
                     "(README: CHAIR)", usage=True)


def _str_map(data: dict, key: str, path: Any) -> dict[str, str]:
    value = data.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _bad_words(f"'{key}' must map words to words", path)
    return {k.lower(): v.lower() for k, v in value.items()}


def load_chair_words(path: str | Path | None = None) -> ChairWords:
    """Read a word file (None: the shipped COCO list). JSON with:

    * ``"format": "butd-chair-words"`` and ``"objects"``: a list of synonym lists, the first word of each
      being the object's name (e.g. ``["dog", "puppy", "doggy"]``); words may be two words ("teddy bear");
    * optional ``"phrases"``: ``{"baby bird": "bird"}``, two singular words read as one word; every
      two-word object word is a phrase of itself unless ``"object_phrases": false`` (the COCO list: the
      reference merges only the phrases it lists, so "dining table" counts as its word "table");
    * optional ``"forms"``: ``{"men": "man"}``, singulars the suffix rules get wrong (added to ``IRREGULAR``);
    * optional ``"drop_with"``: ``{"seat": "toilet"}``, a word ignored when the other is in the caption;
    * optional ``"categories"``: instance category name -> a listed word, where the names differ.
    """
    path = COCO_WORDS if path is None else Path(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad_words(type(e).__name__ + ": " + str(e).splitlines()[0], path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _bad_words(f"no \"format\": \"{FORMAT}\"", path)
    objects = data.get("objects")
    if not isinstance(objects, list) or not objects or not all(
            isinstance(g, list) and g and all(isinstance(w, str) and w.strip() for w in g) for g in objects):
        raise _bad_words("'objects' must be a non-empty list of non-empty word lists", path)
    object_of: dict[str, str] = {}
    for group in objects:
        for w in group:
            object_of[" ".join(w.lower().split())] = " ".join(group[0].lower().split())
    phrases: dict[tuple[str, str], str] = {}
    for text in [w for w in object_of if " " in w]:
        if len(text.split()) != 2:
            raise _bad_words(f"object word {text!r} has more than two words", path)
    own = {w: w for w in object_of if " " in w} if data.get("object_phrases", True) is not False else {}
    for text, word in {**own, **_str_map(data, "phrases", path)}.items():
        parts = tuple(text.split())
        if len(parts) != 2:
            raise _bad_words(f"phrase {text!r} is not two words", path)
        phrases[parts] = word  # type: ignore[index]
    categories = {k: v for k, v in _str_map(data, "categories", path).items()}
    for name, word in categories.items():
        if word not in object_of:
            raise _bad_words(f"category {name!r} maps to {word!r}, which is not a listed word", path)
    source = data.get("source")
    return ChairWords(object_of, phrases, {**IRREGULAR, **_str_map(data, "forms", path)},
                      _str_map(data, "drop_with", path), categories,
                      str(source.get("name", path)) if isinstance(source, dict) else str(path))


def load_instances(paths: Iterable[str | Path]) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    """COCO instance files (``instances_val2014.json``, ...) -> image id (str) -> [(category name, box)].

    Boxes are converted from COCO's [x, y, w, h] to x1, y1, x2, y2. Several files are merged.
    """
    out: dict[str, list[tuple[str, tuple[float, float, float, float]]]] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read the instances file: {type(e).__name__}", path,
                            "pass COCO instance annotations (annotations/instances_val2014.json)", usage=True) from None
        if not isinstance(data, dict) or not isinstance(data.get("categories"), list) \
                or not isinstance(data.get("annotations"), list):
            raise UserError("not a COCO instances file (needs 'categories' and 'annotations' lists)", path,
                            "pass COCO instance annotations (annotations/instances_val2014.json), "
                            "not a captions file", usage=True)
        try:
            names = {int(c["id"]): str(c["name"]).lower() for c in data["categories"]}
            for a in data["annotations"]:
                x, y, w, h = (float(v) for v in a["bbox"])
                out.setdefault(str(a["image_id"]), []).append((names[int(a["category_id"])], (x, y, x + w, y + h)))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"broken instances file ({type(e).__name__}: {e})", path,
                            "each annotation needs image_id, category_id (listed in categories) and bbox [x,y,w,h]",
                            usage=True) from None
    return out


def ground_truth_objects(image_ids: Iterable[str], instances: Mapping[str, Sequence[tuple[str, Any]]],
                         references: Mapping[str, Sequence[str]], words: ChairWords,
                         where: str = "--instances") -> dict[str, set[str]]:
    """Image id -> its ground-truth objects: the instance categories plus the objects its references mention."""
    out: dict[str, set[str]] = {}
    for image_id in image_ids:
        objs = {words.category_object(name, where) for name, _ in instances.get(image_id, ())}
        for ref in references.get(image_id, ()):
            objs.update(m.object for m in words.caption_mentions(ref))
        out[image_id] = objs
    return out


def chair(captions: Mapping[str, str], truth: Mapping[str, set[str]], words: ChairWords) -> dict[str, Any]:
    """CHAIR-s, CHAIR-i and object recall of ``captions`` (image id -> caption) against ``truth``.

    Returns fractions in [0, 1] and ``per_caption``: image id -> {"mentioned", "hallucinated"} (objects in
    caption order, the hallucinated ones with the caption's own words).
    """
    if not captions:
        raise ValueError("no captions")
    n_hall_caps = n_mentions = n_hall = n_truth = n_recalled = 0
    per_caption: dict[str, dict[str, list[str]]] = {}
    for image_id, caption in captions.items():
        tokens = tokenize(caption)
        found = words.mentions(tokens)
        gt = truth.get(image_id, set())
        hallucinated = [m for m in found if m.object not in gt]
        n_mentions += len(found)
        n_hall += len(hallucinated)
        n_hall_caps += bool(hallucinated)
        n_truth += len(gt)
        n_recalled += len(gt & {m.object for m in found})
        per_caption[image_id] = {"mentioned": [m.object for m in found],
                                 "hallucinated": [" ".join(tokens[m.start:m.end]) for m in hallucinated]}
    return {"CHAIR_s": n_hall_caps / len(captions), "CHAIR_i": n_hall / n_mentions if n_mentions else 0.0,
            "object_recall": n_recalled / n_truth if n_truth else 0.0, "mentions": n_mentions,
            "hallucinated": n_hall, "words": words.source, "per_caption": per_caption}
