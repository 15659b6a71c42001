"""`make demo`: the main job end to end on the embedded toy world, through the library calls behind the commands.

toy world -> extraction (effnetlite0 with real ImageNet weights: given boxes, and a grid) -> Up-Down
(XE then a little SCST) on regions and Show-Attend-Tell (soft) on the grid -> COCO metrics -> captions
for real photos shipped by skimage / sklearn / matplotlib -> Up-Down VQA -> HTML reports.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

CONFIGS = Path(__file__).with_name("demo_configs")


def shipped_photos(dest: Path) -> list[Path]:
    """Copy the real photos that installed packages ship (no download) into `dest`."""
    import importlib.util

    def package_dir(name: str) -> Path | None:  # the [dev] extras ship these; a plain install may not
        spec = importlib.util.find_spec(name)
        return Path(spec.origin).parent if spec and spec.origin else None

    dest.mkdir(parents=True, exist_ok=True)
    mpl, ski, skl = package_dir("matplotlib"), package_dir("skimage"), package_dir("sklearn")
    sources = [
        *([mpl / "mpl-data" / "sample_data" / "grace_hopper.jpg"] if mpl else []),
        *([ski / "data" / name for name in ("chelsea.png", "coffee.png", "astronaut.png")] if ski else []),
        *([skl / "datasets" / "images" / "china.jpg"] if skl else []),
    ]
    out = []
    for src in sources:
        if src.is_file():
            shutil.copy(src, dest / src.name)
            out.append(dest / src.name)
    return out


class _Steps:
    """Runs library calls, printing the `butd` command each one stands for and its time."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, command: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.console.print(Text(f"$ butd {command}", style="bold cyan"), soft_wrap=True)  # one line, as typed
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        self.console.print(f"[dim]({time.perf_counter() - t0:.1f} s)[/dim]")
        return result


class _Once:
    """``echo`` that prints each notice line (``... skipped: why``) once per command: the demo evaluates two
    caption runs, whose reports would repeat the same SPICE notice."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo, self.seen = echo, set()

    def __call__(self, message: str) -> None:
        if " skipped: " in str(message):
            if message in self.seen:
                return
            self.seen.add(message)
        self.echo(message)


def run_demo(out: str | Path, *, n_images: int = 160, console: Console | None = None, verbose: bool = False) -> dict:
    """Run every stage on a fresh toy world in `out`; returns the headline numbers. ``verbose`` shows what
    Ray and the metric libraries print (hidden otherwise)."""
    from butd.datasets.toy import ToyConfig, make_toy_world
    from butd.devices import resolve_device
    from butd.evaluate.report import write_report
    from butd.extract.registry import extractor_config
    from butd.extract.runner import run_extraction
    from butd.extract.sources import iter_source
    from butd.shards import verify_store
    from butd.tasks import task_module

    console = console or Console()
    # the library's own lines as they are: no rich markup ("[train step 1]" is not a style), no wrapping
    echo = _Once(lambda message: console.print(message, markup=False, highlight=False, soft_wrap=True))
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    step = _Steps(console)
    toy, feats, runs = out / "toy", out / "features", out / "runs"
    device = resolve_device("auto")
    echo(f"device: {device}")
    t0 = time.perf_counter()

    console.rule("[bold]1. toy world")
    step(f"toy make {toy} --images {n_images} --seed 0", make_toy_world, toy, ToyConfig(n_images=n_images, seed=0))
    console.rule("[bold]2. extraction (Ray, 127.0.0.1 only)")
    for mode in ("boxes", "grid"):
        store = feats / f"toy-{mode}"
        step(f"extract --dataset toy --root {toy} --extractor effnetlite0 --mode {mode} --out {store}",
             run_extraction, iter_source("toy", toy, mode=mode), extractor_config("effnetlite0", mode=mode), store,
             workers=2, progress=False, source_info={"dataset": "toy", "root": str(toy.resolve())}, verbose=verbose)
        report = verify_store(store, progress=False)
        if not report.ok:
            raise SystemExit(f"demo step failed: {store} does not verify: {report.problems[0]}")

    console.rule("[bold]3. captioning: Up-Down on regions (XE, then SCST), Show-Attend-Tell on the grid")
    captions = toy / "dataset_coco.json"
    caption = task_module("caption")
    for model, store in (("updown", "toy-boxes"), ("sat-soft", "toy-grid")):
        options = {"features": feats / store, "captions": captions, "device": device}
        step(f"train --model {model} --config {CONFIGS / (model + '.yaml')} --features {feats / store} "
             f"--captions {captions} --out {runs / model}",
             caption.train, model, options, runs / model, config=CONFIGS / f"{model}.yaml", echo=echo)
        step(f"eval {runs / model} --split test --beam 3 --attention", caption.evaluate, runs / model, "test",
             beam=3, device=device, echo=echo, attention=True, verbose=verbose)

    console.rule("[bold]4. captions for real photos (the extractor recorded in the run, then the model)")
    photos = shipped_photos(out / "photos") or sorted((toy / "val2014").glob("*.jpg"))[:3]
    lines = step(f"caption {runs / 'sat-soft'} " + " ".join(str(p) for p in photos), caption.predict,
                 runs / "sat-soft", photos, beam=3, device=device, warn=echo)
    for path, text in lines:
        print(f"{path}\t{text}", flush=True)  # exactly what `butd caption` prints (rich would expand the tab)

    console.rule("[bold]5. VQA: Up-Down with soft scores, the official accuracy")
    vqa, vdir = task_module("vqa"), toy / "vqa"
    options = {"features": feats / "toy-boxes", "device": device,
               "questions": [vdir / "v2_OpenEnded_mscoco_train2014_questions.json"],
               "annotations": [vdir / "v2_mscoco_train2014_annotations.json"],
               "val_questions": [vdir / "v2_OpenEnded_mscoco_val2014_questions.json"],
               "val_annotations": [vdir / "v2_mscoco_val2014_annotations.json"]}
    step(f"train --model vqa --config {CONFIGS / 'vqa.yaml'} --features {feats / 'toy-boxes'} ... --out {runs / 'vqa'}",
         vqa.train, "vqa", options, runs / "vqa", config=CONFIGS / "vqa.yaml", echo=echo)
    step(f"eval {runs / 'vqa'} --split val", vqa.evaluate, runs / "vqa", "val", device=device, echo=echo)
    val_image = sorted((toy / "val2014").glob("*.jpg"))[0]
    question = "what color is the circle?"
    res = step(f"answer {runs / 'vqa'} {val_image} '{question}' --png {out / 'answer_attention.png'}",
               vqa.predict, runs / "vqa", val_image, question, device=device)
    for a, s in zip(res["answers"], res["scores"]):
        echo(f"{s:6.3f}  {a}")
    vqa.answer_picture(val_image, question, res).save(out / "answer_attention.png")

    console.rule("[bold]6. HTML reports with the attention of every word")
    for run, task in (("updown", "caption"), ("sat-soft", "caption"), ("vqa", "vqa")):
        mod, page = task_module(task), out / "reports" / f"{run}.html"
        items = step(f"report {runs / run} --split {mod.SPLIT} --n 12 --out {page}", mod.report_items,
                     runs / run, mod.SPLIT, 12, None)
        write_report(items, page, title=f"butd {task} report: {run}, {mod.SPLIT} split")

    summary = _summary(runs)
    echo(f"demo finished in {time.perf_counter() - t0:.0f} s — everything is in {out}")  # one line, unwrapped
    table = Table()
    table.add_column("run")
    table.add_column("result")
    for name, text in summary.items():
        table.add_row(name, text)
    console.print(table)
    console.rule("[bold green]demo finished")
    return summary


def _summary(runs: Path) -> dict[str, str]:
    out = {}
    for model in ("updown", "sat-soft"):
        report = json.loads((runs / model / "eval_test.json").read_text())
        m, c, g, d = report["metrics"], report.get("chair"), report.get("grounding"), report["diagnostics"]
        out[model] = (f"test BLEU-4 {100 * m['BLEU-4']:.1f}  METEOR {100 * m.get('METEOR', 0):.1f}  "
                      f"CIDEr {100 * m['CIDEr']:.1f}")
        if c:
            out[f"{model} objects"] = f"CHAIR-s {100 * c['CHAIR_s']:.1f}  CHAIR-i {100 * c['CHAIR_i']:.1f}" + (
                f"  grounding accuracy {100 * g['grounding_accuracy']:.1f}  attention correctness "
                f"{100 * g['attention_correctness']:.1f}" if g and g["grounding_accuracy"] is not None else "")
        out[f"{model} diagnostics"] = (f"repeats {100 * d['repeat']:.1f}%  bad endings {100 * d['bad_ending']:.1f}%  "
                                       f"mean length {d['mean_length']:.1f}  vocabulary {d['vocabulary']}  "
                                       f"copied {100 * (d['in_training'] or 0):.1f}%")
    v = json.loads((runs / "vqa" / "eval_val.json").read_text())
    per = "  ".join(f"{k} {a:.1f}" for k, a in sorted(v["per_answer_type"].items()))
    out["vqa"] = f"val accuracy {v['overall']:.1f}  ({per})"
    return out
