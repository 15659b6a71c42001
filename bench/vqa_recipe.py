"""Benchmark: the VQA training recipe on the toy world, old default vs new default, same epoch budget.

World: ``butd toy make`` with N images (default 300, seed 0) and the oracle region store (no pixels; one region
per object plus noise). Recipes (``butd.train.vqa.load_config`` overrides of the dataclass defaults, i.e. what
``butd train --model vqa`` runs without --config):

* ``old``: the defaults before RECIPES.md (512-d, constant Adamax 2e-3, batch 512, global-norm clip 0.25,
  answer candidates counted over train+val);
* ``new``: the current defaults (see RECIPES.md).

Prints the official accuracy (2017 rules) per answer type for each recipe, the question-type prior (the most
common training answer of each question type) and the majority answer, and the ratios new/old and
new/prior. Run: ``python bench/vqa_recipe.py [--images 300] [--epochs 15]`` (a few minutes on 1 core).

``--configs A.yaml B.yaml ...`` trains each recipe file instead (same world, same epoch budget) and adds its
training time (wall and process CPU seconds) and parameter count: how the default recipe was chosen.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from butd.datasets.toy_features import oracle_vqa_world
from butd.evaluate.vqa_accuracy import normalize_answer, vqa_accuracy
from butd.tasks.vqa import evaluate
from butd.train.vqa import VQAPaths, load_config, train_vqa

OLD = {
    "model": {"hidden_dim": 512, "attention_dim": 512, "joint_dim": 512, "classifier_dim": 512, "dropout": 0.0},
    "data": {"answers_from": "train+val"},
    "loop": {"epochs": 13, "batch_size": 512, "min_steps_per_epoch": 0, "lr": 2e-3, "grad_clip": 0.25,
             "clip_mode": "norm",
             "schedule": {"name": "constant", "warmup": 0.0}},
}


def _paths(root: Path, images: int) -> VQAPaths:
    return VQAPaths(**oracle_vqa_world(root, images))  # type: ignore[arg-type]


def _priors(paths: VQAPaths) -> dict[str, dict]:
    """Official accuracy of the majority answer and of the question-type prior on val."""
    train = json.loads(Path(paths.annotations[0]).read_text())["annotations"]
    val = json.loads(Path(paths.val_annotations[0]).read_text())["annotations"]
    by_type: dict[str, Counter] = defaultdict(Counter)
    for a in train:
        by_type[a["question_type"]][normalize_answer(a["multiple_choice_answer"])] += 1
    overall = Counter(normalize_answer(a["multiple_choice_answer"]) for a in train).most_common(1)[0][0]
    prior = {a["question_id"]: (by_type[a["question_type"]] or Counter({overall: 1})).most_common(1)[0][0]
             for a in val}
    return {"majority": vqa_accuracy({a["question_id"]: overall for a in val}, val),
            "type prior": vqa_accuracy(prior, val)}


def _run(name: str, overrides: dict, paths: VQAPaths, out: Path, epochs: int,
         config: str | None = None) -> tuple[dict, float]:
    cfg = load_config(config, {**overrides, "loop": {**overrides.get("loop", {}), "epochs": epochs,
                                                     "log_every": 0, "num_workers": 0}})
    t0, c0 = time.perf_counter(), time.process_time()
    train_vqa(cfg, paths, out / name, echo=None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    res = evaluate(out / name, "val")
    ckpt = torch.load(out / name / "checkpoints" / "last.pt", weights_only=True)
    res["parameters"] = sum(v.numel() for v in ckpt["model"].values())
    res["cpu_seconds"] = cpu
    return res, wall


def _row(name: str, res: dict, secs: float | None = None) -> str:
    types = res["per_answer_type"]
    cells = " ".join(f"{types.get(t, float('nan')):6.2f}" for t in ("yes/no", "number", "other"))
    return f"{name:11s} {res['overall']:6.2f} {cells}" + (f"  ({secs:.0f}s)" if secs is not None else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--new", default="{}", help="JSON overrides on top of the new defaults (for tuning)")
    ap.add_argument("--skip-old", action="store_true")
    ap.add_argument("--configs", nargs="*", default=(), help="recipe YAML files to compare instead of old/new")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = _paths(root, args.images)
        priors = _priors(paths)
        if args.configs:
            rows = [(c, *_run(Path(c).stem, {}, paths, root, args.epochs, c)) for c in args.configs]
            print(f"toy world: {args.images} images, {args.epochs} epochs, val questions {rows[0][1]['num_questions']}")
            for name, res in priors.items():
                print(_row(name, res))
            for c, res, wall in rows:
                print(_row(Path(c).stem, res, wall) + f"  cpu {res['cpu_seconds']:.0f}s  {res['parameters']:,} params")
            return
        old, t_old = _run("old", OLD, paths, root, args.epochs) if not args.skip_old else (None, 0.0)
        new, t_new = _run("new", json.loads(args.new), paths, root, args.epochs)
    print(f"toy world: {args.images} images, {args.epochs} epochs, val questions {new['num_questions']}")
    print(f"{'recipe':11s} {'all':>6s} {'yes/no':>6s} {'number':>6s} {'other':>6s}")
    for name, res in priors.items():
        print(_row(name, res))
    if old is not None:
        print(_row("old default", old, t_old))
    print(_row("new default", new, t_new))
    if old is not None:
        print(f"ratio new/old overall: {new['overall'] / max(old['overall'], 1e-9):.3f}")
    print(f"margin new - type prior: {new['overall'] - priors['type prior']['overall']:+.2f} points "
          f"(ratio {new['overall'] / max(priors['type prior']['overall'], 1e-9):.3f})")


if __name__ == "__main__":
    main()
