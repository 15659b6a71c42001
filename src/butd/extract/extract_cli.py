"""``butd extract``: images of a dataset -> verified feature store (see butd.extract.runner)."""

from __future__ import annotations

import json
import sys

import click

from butd.extract.registry import ExtractorConfig, names
from butd.extract.selection import POLICIES
from butd.extract.sources import DATASETS, iter_source, load_boxes, with_boxes

__all__ = ["extract_cmd"]


@click.command("extract")
@click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Source layout under --root.")
@click.option("--root", type=click.Path(exists=True, file_okay=False), required=True, help="Dataset root.")
@click.option("--extractor", "extractor", type=click.Choice(names()), required=True)
@click.option("--mode", type=click.Choice(["detect", "grid", "boxes"]), default=None,
              help="Default: detect for bua-r101, grid for CNNs.")
@click.option("--weights", default=None,
              help="Weights file (.pth state dict / .safetensors), 'imagenet' or 'random'.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Store directory (resumable).")
@click.option("--address", default=None, help="Join this Ray cluster instead of starting a local one.")
@click.option("--workers", type=int, default=None, help="Model actors (default: one per GPU, else 1).")
@click.option("--threads", type=int, default=None, help="Torch threads per CPU model actor.")
@click.option("--fp16", is_flag=True, default=None, help="Half precision on GPU; store float16 features.")
@click.option("--boxes", "boxes_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON {image_id: [[x1,y1,x2,y2],...]} of given boxes (mode boxes).")
@click.option("--min-boxes", type=int, default=None, help="Detector: at least this many boxes (default 10).")
@click.option("--max-boxes", type=int, default=None,
              help="Detector: at most this many boxes (default 100; 36 with --min-boxes 36 = fixed 36).")
@click.option("--conf-thresh", type=float, default=None, help="Detector: keep boxes at least this confident (0.2).")
@click.option("--box-source", type=click.Choice(["proposals", "regressed"]), default=None,
              help="Detector: store the pooled proposal boxes (as the original) or the class-regressed ones.")
@click.option("--boxes-policy", type=click.Choice(list(POLICIES)), default=None,
              help="Detector: box selection of this original (caffe: generate_tsv.py 10-100 / fixed N; "
                   "airsplay-36: py-bottom-up-attention's 36 boxes). See features_spec.md.")
@click.option("--shard-size", type=int, default=1000, show_default=True, help="Images per shard / work unit.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--image-size", type=int, default=None, help="Input side for grid networks.")
@click.option("--device", default=None, help="auto | cpu | cuda")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML of ExtractorConfig fields; command-line options win.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Verify the store at the end.")
def extract_cmd(dataset: str, root: str, extractor: str, mode: str | None, weights: str | None, out: str,
                address: str | None, workers: int | None, threads: int | None, fp16: bool | None,
                boxes_file: str | None, min_boxes: int | None, max_boxes: int | None,
                conf_thresh: float | None, box_source: str | None, boxes_policy: str | None, shard_size: int,
                batch_size: int,
                image_size: int | None, device: str | None, config_file: str | None, no_progress: bool,
                verify: bool) -> None:
    """Extract features for every image of --dataset under --root into the store --out."""
    from butd.extract.runner import FAILURES_NAME, run_extraction
    from butd.shards import verify_store

    overrides = {"name": extractor, "mode": mode, "weights": weights, "fp16": fp16, "image_size": image_size,
                 "device": device, "min_boxes": min_boxes, "max_boxes": max_boxes, "conf_thresh": conf_thresh}
    if config_file:
        cfg = ExtractorConfig.from_yaml(config_file, **overrides)
    else:
        cfg = ExtractorConfig(name=extractor).replace(**overrides)
    if box_source:
        cfg = cfg.replace(extra={**cfg.extra, "box_source": box_source})
    if boxes_policy:
        cfg = cfg.replace(extra={**cfg.extra, "boxes_policy": boxes_policy})
    if mode is None and not (config_file and "mode" in _yaml_keys(config_file)):
        cfg = cfg.replace(mode="detect" if extractor.startswith("bua") else "grid")
    items = iter_source(dataset, root, mode=cfg.mode)
    if boxes_file:
        items = with_boxes(items, load_boxes(boxes_file))
    summary = run_extraction(items, cfg, out, address=address, workers=workers, shard_size=shard_size,
                             batch_size=batch_size, progress=not no_progress, threads=threads,
                             source_info={"dataset": dataset, "root": str(root)})
    click.echo(json.dumps(summary.to_dict()))
    if summary.failed:
        click.echo(f"{summary.failed} image(s) could not be read: see {out}/{FAILURES_NAME}", err=True)
    if verify:
        report = verify_store(out, progress=False)
        if not report.ok:
            for p in report.problems:
                click.echo(f"verify: {p}", err=True)
            sys.exit(1)
        click.echo(f"verified {report.records} records in {out}", err=True)


def _yaml_keys(path: str) -> set[str]:
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    return set(data) if isinstance(data, dict) else set()


if __name__ == "__main__":
    extract_cmd()
