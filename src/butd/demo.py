"""`make demo`: the main job end to end on the embedded toy world, through the same commands a user types.

toy world -> extraction (effnetlite0 with real ImageNet weights: given boxes, and a grid) -> Up-Down
(XE then a little SCST) on regions and Show-Attend-Tell (soft) on the grid -> COCO metrics -> captions
for real photos shipped by skimage / sklearn / matplotlib -> Up-Down VQA -> HTML reports.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

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


class _Runner:
    """Runs `butd` commands in this process, printing each as the user would type it."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, *args: str | Path) -> None:
        from butd.cli import main

        argv = [str(a) for a in args]
        self.console.print(f"[bold cyan]$ butd {shlex.join(argv)}")
        t0 = time.perf_counter()
        try:
            main.main(argv, prog_name="butd", standalone_mode=False)
        except click.ClickException as exc:
            raise SystemExit(f"demo step failed: butd {shlex.join(argv)}: {exc.format_message()}") from None
        self.console.print(f"[dim]({time.perf_counter() - t0:.1f} s)[/dim]")


def run_demo(out: str | Path, *, n_images: int = 160, console: Console | None = None) -> dict:
    """Run every stage on a fresh toy world in `out`; returns the headline numbers."""
    console = console or Console()
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    butd = _Runner(console)
    toy, feats, runs = out / "toy", out / "features", out / "runs"
    t0 = time.perf_counter()

    console.rule("[bold]1. toy world")
    butd("toy", "make", toy, "--images", n_images, "--seed", 0)
    console.rule("[bold]2. extraction (Ray, 127.0.0.1 only)")
    for mode in ("boxes", "grid"):
        butd("extract", "--dataset", "toy", "--root", toy, "--extractor", "effnetlite0", "--mode", mode,
             "--out", feats / f"toy-{mode}", "--workers", 2, "--no-progress")
    butd("shards", "info", feats / "toy-boxes")

    console.rule("[bold]3. captioning: Up-Down on regions (XE, then SCST), Show-Attend-Tell on the grid")
    captions = toy / "dataset_coco.json"
    for model, store, cfg in (("updown", "toy-boxes", "updown"), ("sat-soft", "toy-grid", "sat-soft")):
        butd("train", "--model", model, "--config", CONFIGS / f"{cfg}.yaml", "--features", feats / store,
             "--captions", captions, "--out", runs / model)
        butd("eval", runs / model, "--split", "test", "--beam", 3)

    console.rule("[bold]4. captions for real photos (extractor from the run's store manifest, then the model)")
    photos = shipped_photos(out / "photos") or sorted((toy / "val2014").glob("*.jpg"))[:3]
    butd("caption", runs / "sat-soft", *photos)

    console.rule("[bold]5. VQA: Up-Down with soft scores, the official accuracy")
    vqa = toy / "vqa"
    butd("train", "--model", "vqa", "--config", CONFIGS / "vqa.yaml", "--features", feats / "toy-boxes",
         "--questions", vqa / "v2_OpenEnded_mscoco_train2014_questions.json",
         "--annotations", vqa / "v2_mscoco_train2014_annotations.json",
         "--val-questions", vqa / "v2_OpenEnded_mscoco_val2014_questions.json",
         "--val-annotations", vqa / "v2_mscoco_val2014_annotations.json", "--out", runs / "vqa")
    butd("eval", runs / "vqa", "--split", "val")
    val_image = sorted((toy / "val2014").glob("*.jpg"))[0]
    butd("answer", runs / "vqa", val_image, "what color is the circle?", "--png", out / "answer_attention.png")

    console.rule("[bold]6. HTML reports with the attention of every word")
    for run, split in (("updown", "test"), ("sat-soft", "test"), ("vqa", "val")):
        butd("report", runs / run, "--split", split, "--n", 12, "--out", out / "reports" / f"{run}.html")

    summary = _summary(runs)
    table = Table(title=f"demo finished in {time.perf_counter() - t0:.0f} s — everything is in {out}")
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
        m = json.loads((runs / model / "eval_test.json").read_text())["metrics"]
        out[model] = (f"test BLEU-4 {100 * m['BLEU-4']:.1f}  METEOR {100 * m.get('METEOR', 0):.1f}  "
                      f"CIDEr {100 * m['CIDEr']:.1f}")
    v = json.loads((runs / "vqa" / "eval_val.json").read_text())
    per = "  ".join(f"{k} {a:.1f}" for k, a in sorted(v["per_answer_type"].items()))
    out["vqa"] = f"val accuracy {v['overall']:.1f}  ({per})"
    return out
