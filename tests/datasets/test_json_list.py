"""iter_list gives exactly json.loads(text)[key], element by element, and fails wherever json.loads fails."""

from __future__ import annotations

import json
import random

import pytest

from butd.datasets.json_list import NotAListError, iter_list, read_list


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([True, False, None])
    if kind == 1:
        return rng.randint(-10**12, 10**12)
    if kind == 2:
        return rng.choice([0.5, -1.25e-7, 3e21, 1.0, -0.0, rng.random()])
    if kind in (3, 4, 5):
        return "".join(rng.choice(['a', ' ', '"', '\\', '\n', '\t', 'é', '\u2028', '😀', '/', '{', ']', ','])
                       for _ in range(rng.randrange(8)))
    if kind in (6, 7):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_value(rng, 3) if rng.random() < 0.5 else f"k{i}": _value(rng, depth + 1) for i in range(rng.randrange(4))}


def _dump(rng: random.Random, obj) -> str:
    style = rng.randrange(3)
    text = json.dumps(obj, ensure_ascii=rng.random() < 0.5, indent=[None, 2, "\t"][style],
                      separators=None if style else rng.choice([(",", ":"), (" , ", " : ")]))
    return rng.choice(["", " ", "\n\r\t "]) + text + rng.choice(["", "\n", "  \r\n"])


def _outcome(fn):
    try:
        return "ok", fn()
    except json.JSONDecodeError:
        return "malformed", None
    except NotAListError:
        return "not-a-list", None


@pytest.mark.parametrize("seed", range(4))
def test_equals_json_loads_on_random_documents(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(60):
        members = [(f"m{i}", _value(rng)) for i in range(rng.randrange(4))]
        members.insert(rng.randrange(len(members) + 1), ("images", [_value(rng) for _ in range(rng.randrange(6))]))
        text = _dump(rng, dict(members))
        assert list(iter_list(text, "images")) == json.loads(text)["images"]


def test_fails_exactly_where_json_loads_fails() -> None:
    rng = random.Random(7)
    text = _dump(rng, {"a": [1, {"b": "x]"}], "images": [{"s": "t,}"}, [2.5, None], "q\\"], "z": {}})
    for cut in range(len(text) + 1):  # every prefix: truncated files
        want = _outcome(lambda t=text[:cut]: json.loads(t)["images"])
        got = _outcome(lambda t=text[:cut]: list(iter_list(t, "images")))
        assert got[0] == want[0] or (want[0] == "ok" and got[0] == "not-a-list"), (cut, text[:cut])
        if want[0] == "ok":
            assert got == want
    for bad in ['{"images": [1,]}', '{"images": [1] 2}', '{"images": [1],}', '{"images" [1]}', '{images: []}',
                '{"images": [1]} x', '{"images": [1] "a": 2}', '{"a": 1 "images": []}', '{"images": [01]}', '']:
        with pytest.raises(json.JSONDecodeError):
            json.loads(bad)
        with pytest.raises(json.JSONDecodeError):
            list(iter_list(bad, "images"))


@pytest.mark.parametrize("text", ['[1, 2]', '"images"', '{}', '{"other": [1]}', '{"images": {"a": 1}}',
                                  '{"images": 3}', '{"images": [1], "images": [2]}'])
def test_not_an_object_with_that_list(text: str) -> None:
    json.loads(text)  # well-formed
    with pytest.raises(NotAListError):
        list(iter_list(text, "images"))


def test_read_list_reads_utf8_files(tmp_path) -> None:
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"images": ["é", {"x": [1]}]}, ensure_ascii=False), encoding="utf-8")
    assert list(read_list(path, "images")) == ["é", {"x": [1]}]
    assert list(iter_list('{"images": []}', "images")) == []
