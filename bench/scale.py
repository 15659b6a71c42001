"""COCO-sized data through butd's real data paths: time and peak memory at 1%, 10% and 100% of COCO.

Generates deterministic synthetic data of COCO's size (123,287 images with 10-100 boxes of 16 features, a
Karpathy JSON of 616,767 captions, VQA v2's 443,757 + 214,354 questions with 10 answers each; see
bench/scale_lib/data.py), then times butd's own functions on it: the store (write, open, 10,000 random reads,
verify, an extraction resume scan), captioning (Karpathy JSON, vocabulary, CIDEr-D document frequencies,
Datasets, one epoch of DataLoader + collate with a no-op model), VQA (JSON, store join, question vocabulary,
answer candidates, soft scores, Datasets, one epoch) and the Ray extraction pipeline over 20,000 tiny images
with a trivial extractor (per-image overhead, the driver's memory).

Each group of steps runs in a fresh process per size, so peak memory is per size; within it the peak is
per step (see bench/scale_lib/meter.py). The sizes take turns for ``--rounds`` rounds; times are medians,
peaks the largest seen. Goals: every step grows linearly (<= 12x time per 10x data) and no
step's peak anonymous memory (RSS without the store's file-backed pages) reaches 4 GiB at full size.

  python bench/scale.py                       # 1%, 10%, 100%, 3 rounds (14 min on 2 idle cores)
  python bench/scale.py --fraction 0.01 --rounds 1 --steps store,vqa-answers --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

from scale_lib import data, steps  # noqa: E402

GOAL_GROWTH = 1.2  # time may grow 12x when the data grows 10x
GOAL_MB = 4096.0
TOO_FAST_S = 0.1  # below this, growth ratios are timer noise
WALL_TIMED = {"ray-extract"}  # "CPU s" of these steps is wall time (the work happens in Ray's processes)


def _child(args: argparse.Namespace) -> None:
    from scale_lib.meter import Meter

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    files, sizes = steps.Files(Path(args.dir)), data.Sizes.at(args.fraction[0])
    if args.child == "gen":
        t = time.perf_counter()
        steps.generate(files, sizes)
        out = {"gen": {"seconds": time.perf_counter() - t}}
    else:
        meter = Meter()
        steps.RUNNERS[args.child](files, sizes, args.steps, meter)
        out = meter.results
    Path(args.result).write_text(json.dumps(out))


def _run_child(group: str, fraction: float, folder: Path, todo: list[str]) -> dict:
    result = folder / f"result-{group}.json"
    cmd = [sys.executable, __file__, "--child", group, "--fraction", str(fraction), "--dir", str(folder),
           "--steps", ",".join(todo), "--result", str(result)]
    subprocess.run(cmd, check=True)
    return json.loads(result.read_text())


def _combine(runs: list[dict]) -> dict:
    """One result per step over the rounds: median times, the largest peaks, and every round's times."""
    out = {}
    for name in runs[0]:
        rs = [r[name] for r in runs]
        out[name] = {**rs[-1], "rounds": [{k: r.get(k) for k in ("seconds", "cpu_seconds")} for r in rs]}
        for key in ("seconds", "cpu_seconds"):
            if key in rs[0]:
                out[name][key] = statistics.median(r[key] for r in rs)
        for key in ("peak_rss_mb", "peak_anon_mb"):
            if rs[0].get(key) is not None:
                out[name][key] = max(r[key] for r in rs)
    return out


def measure(fractions: list[float], todo: list[str], scratch: Path, keep: bool, rounds: int) -> dict[float, dict]:
    """Every step of ``todo`` (plus what it needs) at each size, ``rounds`` times, the sizes taking turns (so
    other load on the machine hits each size alike); every group of steps runs in a fresh process."""
    folders = {f: Path(tempfile.mkdtemp(prefix=f"scale-{f:g}-", dir=scratch)) for f in fractions}
    gen = {f: {} for f in fractions}
    runs: dict[float, list[dict]] = {f: [] for f in fractions}
    try:
        for f in fractions:
            gen[f] = _run_child("gen", f, folders[f], [])
        for r in range(rounds):
            for f in fractions:
                print(f"== round {r + 1}/{rounds}: {f * 100:g}% of COCO {data.Sizes.at(f)}", flush=True)
                res: dict = {}
                for group, names in steps.GROUPS.items():
                    if any(s in names for s in todo):
                        res.update(_run_child(group, f, folders[f], todo))
                runs[f].append(res)
    finally:
        if not keep:
            for folder in folders.values():
                shutil.rmtree(folder, ignore_errors=True)
    return {f: {**gen[f], **_combine(runs[f])} for f in fractions}


def _fmt_s(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _fmt_mb(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def _time(name: str, x: dict) -> float:
    """The time a step's growth is judged by: this process's CPU time (robust to other load on the machine),
    or wall time for the Ray pipeline, whose work is done in other processes."""
    return x["seconds"] if name in WALL_TIMED else x["cpu_seconds"]


def growth_rows(results: dict[float, dict], shown: list[str]) -> tuple[list[list[str]], list[str]]:
    """Markdown rows (one per step) and the list of goals missed."""
    fr = sorted(results)
    misses: list[str] = []
    rows = []
    for name in shown:
        r = [results[f].get(name) for f in fr]
        cells = [f"`{name}`", *(_fmt_s(_time(name, x)) if x else "—" for x in r)]
        for a, b, fa, fb in zip(r, r[1:], fr, fr[1:]):
            if not (a and b):
                cells.append("—")
                continue
            ratio, allowed = _time(name, b) / max(_time(name, a), 1e-9), GOAL_GROWTH * fb / fa
            ok = ratio <= allowed or _time(name, b) < TOO_FAST_S
            if not ok:
                misses.append(f"{name}: time x{ratio:.1f} from {fa:g} to {fb:g} (allowed x{allowed:.1f})")
            cells.append(f"{ratio:.1f}×" + ("" if ok else " ✘"))
        cells.append(_fmt_s(r[-1]["seconds"]) if r[-1] else "—")
        cells += [_fmt_mb(x["peak_rss_mb"]) if x else "—" for x in r]
        cells += [_fmt_mb(x["peak_anon_mb"]) if x else "—" for x in r]
        if r[-1] and fr[-1] >= 1 and r[-1]["peak_anon_mb"] >= GOAL_MB:
            misses.append(f"{name}: peak anonymous memory {r[-1]['peak_anon_mb']:.0f} MiB at full size")
        rows.append(cells)
    return rows, misses


def markdown(results: dict[float, dict], shown: list[str]) -> tuple[str, list[str]]:
    fr = sorted(results)
    pct = [f"{f * 100:g}%" for f in fr]
    head = ["step", *(f"CPU s @{p}" for p in pct), *(f"×{b}/{a}" for a, b in zip(pct, pct[1:])),
            f"wall s @{pct[-1]}", *(f"peak RSS MiB @{p}" for p in pct), *(f"peak anon MiB @{p}" for p in pct)]
    rows, misses = growth_rows(results, shown)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    notes = []
    for name in shown:
        info = results[fr[-1]].get(name, {}).get("info")
        if info:
            notes.append(f"- `{name}` @{pct[-1]}: " + ", ".join(
                f"{k} {v:,.1f}" if isinstance(v, float) else f"{k} {v:,}" for k, v in info.items()))
    return "\n".join(lines + [""] + notes), misses


def _steps_arg(text: str) -> list[str]:
    out: list[str] = []
    for part in filter(None, text.split(",")):
        if part in steps.GROUPS:
            out += steps.GROUPS[part]
        elif part in steps.STEPS:
            out.append(part)
        else:
            raise SystemExit(f"Error: unknown step {part!r} (--steps): use groups {', '.join(steps.GROUPS)} or "
                             f"steps {', '.join(steps.STEPS)}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=lambda s: [float(x) for x in s.split(",")], default=[0.01, 0.1, 1.0],
                    help="comma-separated fractions of COCO's size (default 0.01,0.1,1)")
    ap.add_argument("--steps", type=_steps_arg, default=list(steps.STEPS),
                    help=f"comma-separated steps or groups ({', '.join(steps.GROUPS)}); default all")
    ap.add_argument("--scratch", type=Path, default=None,
                    help="folder for the generated data (default /work/scratch if it exists, else the temp dir)")
    ap.add_argument("--markdown", type=Path, help="also write the table to this file")
    ap.add_argument("--json", type=Path, help="also write every measurement to this file")
    ap.add_argument("--rounds", type=int, default=3, help="runs of every size, in turns; medians are reported")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    scratch = args.scratch or (Path("/work/scratch") if Path("/work/scratch").is_dir() else Path(tempfile.gettempdir()))
    scratch.mkdir(parents=True, exist_ok=True)
    todo = steps.needed(args.steps)
    t0 = time.perf_counter()
    results = measure(sorted(args.fraction), todo, scratch, args.keep, args.rounds)
    table, misses = markdown(results, [s for s in steps.STEPS if s in args.steps])
    load = os.getloadavg()
    print(f"\n{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print(table)
    print("\ngoals: " + ("all met (linear growth, < 4 GiB)" if not misses else "MISSED\n  " + "\n  ".join(misses)))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps({str(f): r for f, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
