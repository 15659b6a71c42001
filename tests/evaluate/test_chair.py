"""CHAIR equals the reference (Rohrbach et al.'s utils/chair.py) caption by caption, on a fixture of synonyms,
plurals, two-word objects and words outside the vocabulary; word files and instance files fail in one line."""

import json
from pathlib import Path

import pytest

from butd.errors import UserError
from butd.evaluate.chair import (
    ChairWords,
    chair,
    ground_truth_objects,
    load_chair_words,
    load_instances,
    singular,
    tokenize,
)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "chair_fixture.json").read_text())
CASES, EXPECTED = FIXTURE["cases"], FIXTURE["expected"]


def _instances_file(path: Path, cases: dict) -> Path:
    names = sorted({c for case in cases.values() for c in case["instances"]})
    data = {"categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
            "annotations": [{"image_id": int(k), "category_id": names.index(c) + 1, "bbox": [1, 2, 3, 4]}
                            for k, case in cases.items() for c in case["instances"]]}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    words = load_chair_words()
    inst = load_instances([_instances_file(tmp_path_factory.mktemp("inst") / "instances.json", CASES)])
    refs = {k: c["references"] for k, c in CASES.items()}
    return words, ground_truth_objects(list(CASES), inst, refs, words)


def test_fixture_covers_synonyms_plurals_phrases_and_unknown_words():
    captions = " ".join(c["caption"] for c in CASES.values())
    for word in ("puppy", "sofa", "men", "knives", "taxis", "teddy bear", "hot dog", "baby elephant", "toilet seat",
                 "wine glasses", "motor bike", "castle", "unicorn"):
        assert word in captions, word
    assert len(CASES) == 40 and sum(bool(e["hallucinated"]) for e in EXPECTED.values()) >= 10


def test_per_caption_objects_and_hallucinations_equal_the_reference(truth):
    words, gt = truth
    for key, case in CASES.items():
        exp = EXPECTED[key]
        assert sorted(gt[key]) == exp["gt"], key
        mentions = words.caption_mentions(case["caption"])
        hall = [m for m in mentions if m.object not in gt[key]]
        assert [m.object for m in mentions] == exp["generated"], (key, case["caption"])
        assert [[m.word, m.object] for m in hall] == exp["hallucinated"], (key, case["caption"])
        starts = [m.start for m in hall]
        if key == "13":  # the reference drops "seat" before indexing, shifting later indices by one (its bug)
            assert [s - 1 for s in starts] == exp["hallucination_idxs"]
        else:
            assert starts == exp["hallucination_idxs"], (key, case["caption"])


def test_chair_s_and_chair_i_equal_the_reference(truth):
    words, gt = truth
    res = chair({k: c["caption"] for k, c in CASES.items()}, gt, words)
    assert res["CHAIR_s"] == pytest.approx(FIXTURE["CHAIR_s"], abs=1e-12)
    assert res["CHAIR_i"] == pytest.approx(FIXTURE["CHAIR_i"], abs=1e-12)
    assert res["per_caption"]["1"] == {"mentioned": ["dog", "frisbee"], "hallucinated": ["frisbee"]}
    assert res["per_caption"]["4"]["hallucinated"] == ["zebras"]  # the caption's own word
    # recall: ground-truth objects mentioned / ground-truth objects, summed over images
    n_gt = sum(len(v) for v in gt.values())
    hit = sum(len(gt[k] & set(EXPECTED[k]["generated"])) for k in CASES)
    assert res["object_recall"] == pytest.approx(hit / n_gt)


def test_an_independent_count_from_the_papers_definition(truth):
    """CHAIR-i = hallucinated mentions / mentions; CHAIR-s = captions with one / captions (counted here
    from the reference's per-caption lists, not from butd's matcher)."""
    n_caps = len(EXPECTED)
    hall_caps = sum(bool(e["hallucinated"]) for e in EXPECTED.values())
    mentions = sum(len(e["generated"]) for e in EXPECTED.values())
    hall = sum(len(e["hallucinated"]) for e in EXPECTED.values())
    assert FIXTURE["CHAIR_s"] == hall_caps / n_caps and FIXTURE["CHAIR_i"] == pytest.approx(hall / mentions)


def test_tokenize_and_singular():
    assert tokenize("A man's dog, a hot-dog and a t.v. on the table.") == [
        "a", "man", "'s", "dog", ",", "a", "hot-dog", "and", "a", "t.v.", "on", "the", "table", "."]
    assert tokenize("1,000 sheep at 5:30... ok") == ["1,000", "sheep", "at", "5:30", "...", "ok"]
    known = {"taxi", "bus", "glass"}
    assert [singular(w, known=known) for w in ("dogs", "ponies", "benches", "glasses", "taxis", "tennis", "buses",
                                                 "men", "knives", "heroes", "is")] == [
        "dog", "pony", "bench", "glass", "taxi", "tennis", "bus", "man", "knife", "hero", "is"]


def test_a_user_word_list_works(tmp_path):
    path = tmp_path / "words.json"
    path.write_text(json.dumps({"format": "butd-chair-words", "objects": [["sofa", "couch"], ["lamp"], ["ice cream"]],
                                "phrases": {"desk lamp": "lamp"}, "forms": {"lampen": "lamp"},
                                "categories": {"Settee": "sofa"}}))
    words = load_chair_words(path)
    assert isinstance(words, ChairWords) and words.objects == ("sofa", "lamp", "ice cream")
    m = words.caption_mentions("Two couches, a desk lamp, lampen and ice creams")
    assert [(x.word, x.object, x.start, x.end) for x in m] == [
        ("couch", "sofa", 1, 2), ("lamp", "lamp", 4, 6), ("lamp", "lamp", 7, 8), ("ice cream", "ice cream", 9, 11)]
    assert words.category_object("settee", "x") == "sofa"
    res = chair({"1": "a couch and a lamp"}, {"1": {"sofa"}}, words)
    assert res["CHAIR_s"] == 1.0 and res["CHAIR_i"] == 0.5 and res["per_caption"]["1"]["hallucinated"] == ["lamp"]


@pytest.mark.parametrize("content, why", [
    ("not json", "JSONDecodeError"),
    ('{"objects": [["a"]]}', 'no "format": "butd-chair-words"'),
    ('{"format": "butd-chair-words", "objects": []}', "'objects' must be a non-empty list"),
    ('{"format": "butd-chair-words", "objects": [["a", 3]]}', "'objects' must be a non-empty list"),
    ('{"format": "butd-chair-words", "objects": [["one two three"]]}', "more than two words"),
    ('{"format": "butd-chair-words", "objects": [["a"]], "phrases": {"x": "a"}}', "is not two words"),
    ('{"format": "butd-chair-words", "objects": [["a"]], "categories": {"b": "c"}}', "not a listed word"),
])
def test_a_bad_word_file_is_one_usage_error(tmp_path, content, why):
    path = tmp_path / "w.json"
    path.write_text(content)
    with pytest.raises(UserError) as e:
        load_chair_words(path)
    assert e.value.usage and why in e.value.line() and "\n" not in e.value.line() and str(path) in e.value.line()


def test_bad_instance_files_and_unknown_categories_are_one_usage_error(tmp_path):
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"annotations": [{"image_id": 1, "caption": "a dog"}], "images": []}))
    with pytest.raises(UserError, match="not a COCO instances file") as e:
        load_instances([captions])
    assert e.value.usage
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"categories": [{"id": 1, "name": "dog"}], "annotations": [{"image_id": 1}]}))
    with pytest.raises(UserError, match="broken instances file"):
        load_instances([broken])
    other = _instances_file(tmp_path / "i.json", {"1": {"instances": ["circle"]}})
    with pytest.raises(UserError, match="'circle' is not in the CHAIR word list"):
        ground_truth_objects(["1"], load_instances([other]), {}, load_chair_words())
