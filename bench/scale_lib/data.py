"""Deterministic synthetic data of COCO's size: a Karpathy split JSON, VQA v2 files, store records, tiny images.

Sizes at fraction 1 are the real datasets' (``FULL``): COCO Karpathy 123,287 images (train 82,783, restval
30,504, val 5,000, test 5,000) and 616,767 captions; VQA v2 443,757 training questions on the 82,783
train2014 images and 214,354 validation questions on the 40,504 val2014 images (Karpathy's val + test +
restval), 10 answers each. Distributions are chosen to look like the real files where the code's cost depends
on them: caption lengths (mean 10.5 words) and a vocabulary of ~25k words of which ~9.5k occur >= 6 times
(Karpathy's COCO vocabulary: 9,487 words); questions of ~6 words; answers 38% yes/no, 12% numbers, 50% a
long-tailed "other" list, so that ~3,129 consensus answers occur >= 9 times over train + val (the VQA v2
candidate count). Files are written record by record, so generating them needs little memory.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FULL = {"images": 123_287, "captions": 616_767, "train": 82_783, "restval": 30_504, "val": 5_000, "test": 5_000,
        "vqa_train": 443_757, "vqa_val": 214_354, "ray_images": 20_000}
FEATURE_DIM = 16
SEED = 0

_CONSONANTS, _VOWELS = "bdfghklmnprstvz", "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]
_RESERVED = {"none", "zero", "one", "two", "ten", "a", "an", "the", "no", "yes"}  # would be normalised / collide
_QUESTION_TYPES = {  # prefix -> answer type (a few of VQA v2's 65 question types)
    "yes/no": ["is the", "is this", "are the", "are there", "does the", "is there a", "can you", "do you"],
    "number": ["how many", "how many people are", "what number is"],
    "other": ["what color is the", "what is the", "what is", "what kind of", "what type of", "where is the",
              "what is the man", "which", "who is", "why", "what sport is", "what room is"],
}


@dataclass(frozen=True)
class Sizes:
    fraction: float
    images: int
    captions: int
    splits: dict[str, int]
    vqa_train: int
    vqa_val: int
    ray_images: int

    @classmethod
    def at(cls, fraction: float) -> Sizes:
        def n(key: str) -> int:
            return max(1, round(FULL[key] * fraction))

        images = n("images")
        splits = {s: n(s) for s in ("test", "val", "restval")}
        splits["train"] = max(1, images - sum(splits.values()))
        images = sum(splits.values())
        return cls(fraction, images, max(5 * images, n("captions")), splits, n("vqa_train"), n("vqa_val"),
                   n("ray_images"))


def words(count: int) -> list[str]:
    """``count`` distinct lower-case pseudo-words, short ones first (frequent words are short)."""
    out: list[str] = []
    length = 1
    while len(out) < count:
        for idx in np.ndindex(*([len(_SYLLABLES)] * length)):
            w = "".join(_SYLLABLES[i] for i in idx)
            if w not in _RESERVED:
                out.append(w)
                if len(out) == count:
                    break
        length += 1
    return out


def _zipf(n: int, q: float, r0: int, s2: float, s1: float = 1.0) -> np.ndarray:
    """Rank probabilities: (r+q)^-s1 up to rank r0 (Zipf), then a steeper power s2 (the rare-word tail)."""
    r = np.arange(n, dtype=np.float64)
    p = (r + q) ** -s1
    tail = r >= r0
    p[tail] = (r0 + q) ** -s1 * ((r[tail] + q) / (r0 + q)) ** -s2
    return p / p.sum()


def image_ids(sizes: Sizes) -> np.ndarray:
    """COCO-like ids (1..581,929), in Karpathy-split order: test, val, restval (val2014), then train (train2014)."""
    rng = np.random.default_rng(SEED)
    return rng.choice(581_929, size=sizes.images, replace=False) + 1


def _split_of(sizes: Sizes) -> list[str]:
    return [s for s in ("test", "val", "restval", "train") for _ in range(sizes.splits[s])]


def write_karpathy(path: Path, sizes: Sizes) -> None:
    """``dataset_coco.json`` layout: images with filepath, filename, imgid, split, sentids, sentences, cocoid."""
    rng = np.random.default_rng(SEED + 1)
    vocab = words(40_000)
    p = _zipf(len(vocab), 2.7, 1000, 2.3)
    per_image = np.full(sizes.images, 5)
    extra = sizes.captions - 5 * sizes.images  # COCO: a few images have 6 or 7 captions
    while extra > 0:
        i = int(rng.integers(sizes.images))
        if per_image[i] < 7:
            per_image[i] += 1
            extra -= 1
    n_sent = int(per_image.sum())
    lengths = np.clip(np.rint(rng.normal(10.5, 2.3, n_sent)), 6, 50).astype(np.int64)
    lengths[rng.random(n_sent) < 0.01] += 10
    tokens = rng.choice(len(vocab), size=int(lengths.sum()), p=p)
    ids, splits = image_ids(sizes), _split_of(sizes)
    pos = sent = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"images": [')
        for i in range(sizes.images):
            folder = "train2014" if splits[i] == "train" else "val2014"
            sents = []
            for _ in range(per_image[i]):
                toks = [vocab[t] for t in tokens[pos:pos + lengths[sent]]]
                pos += int(lengths[sent])
                sents.append({"tokens": toks, "raw": " ".join(toks).capitalize() + ".", "imgid": i, "sentid": sent})
                sent += 1
            im = {"filepath": folder, "sentids": [s["sentid"] for s in sents],
                  "filename": f"COCO_{folder}_{int(ids[i]):012d}.jpg", "imgid": i, "split": splits[i],
                  "sentences": sents, "cocoid": int(ids[i])}
            f.write(("," if i else "") + json.dumps(im))
        f.write('], "dataset": "coco"}')


def _answer_tables() -> dict[str, tuple[list[str], np.ndarray]]:
    other = words(61_000)[1_000:]  # 60,000 strings, every fifth a two-word answer
    other = [w if r % 5 else f"{w} {other[r // 5]}" for r, w in enumerate(other)]
    nums = np.exp(-np.abs(np.arange(21) - 2.0) / 1.5)
    nums[0] *= 0.5
    return {"yes/no": (["yes", "no"], np.array([0.5, 0.5])),
            "number": ([str(k) for k in range(21)], nums / nums.sum()),
            "other": (other, _zipf(len(other), 3.0, len(other), 1.0, s1=1.103))}


def write_vqa(questions: Path, annotations: Path, sizes: Sizes, split: str) -> None:
    """VQA v2 questions and annotations of ``split`` ("train": Karpathy train images, "val": the rest)."""
    rng = np.random.default_rng(SEED + (2 if split == "train" else 3))
    ids = image_ids(sizes)
    n_train = sizes.splits["train"]
    imgs = ids[-n_train:] if split == "train" else ids[:-n_train] if sizes.images > n_train else ids
    total = sizes.vqa_train if split == "train" else sizes.vqa_val
    per_image = np.full(imgs.size, total // imgs.size)
    per_image[rng.choice(imgs.size, total % imgs.size, replace=False)] += 1
    tables = _answer_tables()
    qwords = words(40_000)
    qp = _zipf(len(qwords), 2.7, 1000, 2.3)
    types = rng.choice(3, size=total, p=[0.38, 0.12, 0.50])
    agree = np.array([0.85, 0.65, 0.55])[types]
    type_names = list(_QUESTION_TYPES)
    draws = {t: rng.choice(len(tables[t][0]), size=(total, 11), p=tables[t][1]) for t in type_names}
    same = rng.random((total, 10)) < agree[:, None]
    n_words = rng.integers(1, 5, size=total)
    subject = rng.choice(len(qwords), size=(total, 4), p=qp)
    prefix = rng.integers(0, 12, size=total)
    conf = rng.choice(3, size=(total, 10), p=[0.8, 0.15, 0.05])
    q = 0
    with open(questions, "w", encoding="utf-8") as fq, open(annotations, "w", encoding="utf-8") as fa:
        fq.write(f'{{"info": {{}}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "{split}2014", '
                 '"questions": [')
        fa.write(f'{{"info": {{}}, "data_subtype": "{split}2014", "annotations": [')
        for image_id, count in zip(imgs.tolist(), per_image.tolist()):
            for k in range(count):
                t = type_names[types[q]]
                names, _ = tables[t]
                qtype = _QUESTION_TYPES[t][prefix[q] % len(_QUESTION_TYPES[t])]
                text = " ".join([qtype, *(qwords[w] for w in subject[q, :n_words[q]])]) + "?"
                intended = names[draws[t][q, 0]]
                human = [intended if same[q, j] else names[draws[t][q, j + 1]] for j in range(10)]
                qid = image_id * 1000 + k
                sep = "," if q else ""
                fq.write(sep + json.dumps({"image_id": image_id, "question": text.capitalize(), "question_id": qid}))
                fa.write(sep + json.dumps({
                    "question_type": qtype, "multiple_choice_answer": Counter(human).most_common(1)[0][0],
                    "answers": [{"answer": a, "answer_confidence": ("yes", "maybe", "no")[conf[q, j]],
                                 "answer_id": j + 1} for j, a in enumerate(human)],
                    "image_id": image_id, "answer_type": t, "question_id": qid}))
                q += 1
        fq.write("]}")
        fa.write("]}")


def store_records(sizes: Sizes) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(store id, region record) of every image, sorted by id as the extraction runner writes them: 10-100
    boxes of ``FEATURE_DIM`` float32 features (slices of a small random pool: cheap to make, all different)."""
    from butd.shards import scalar

    rng = np.random.default_rng(SEED + 4)
    pool = rng.standard_normal((1 << 16, FEATURE_DIM)).astype(np.float32)
    box_pool = np.sort(rng.uniform(0, 480, (1 << 16, 4)).astype(np.float32), axis=1)
    keys = sorted(str(i) for i in image_ids(sizes))
    ks = rng.integers(10, 101, size=len(keys))
    offsets = rng.integers(0, (1 << 16) - 100, size=len(keys))
    for key, k, off in zip(keys, ks.tolist(), offsets.tolist()):
        yield key, {"boxes": box_pool[off:off + k], "features": pool[off:off + k], "num_boxes": scalar(k),
                    "image_w": scalar(640), "image_h": scalar(480)}


def write_images(root: Path, count: int) -> int:
    """``count`` tiny PNGs (8x8) plus 0.5% empty ``.jpg`` files (broken images); returns how many are broken."""
    from PIL import Image

    rng = np.random.default_rng(SEED + 5)
    root.mkdir(parents=True, exist_ok=True)
    broken = set(range(min(1, count - 1), count, 200))
    for i in range(count):
        if i in broken:
            (root / f"im{i:06d}.jpg").write_bytes(b"")
        else:
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / f"im{i:06d}.png")
    return len(broken)
