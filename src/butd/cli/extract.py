"""``butd extract`` (images -> verified feature store) and ``butd weights convert``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from butd.cli import LazyGroup
from butd.cli.options import RegistryChoice, device_option

__all__ = ["extract_cmd", "weights"]


@click.command("extract")
@click.option("--dataset", type=RegistryChoice("butd.extract.sources:SOURCES"), required=True,
              help="Source layout under --root.")
@click.option("--root", type=click.Path(exists=True, file_okay=False), required=True, help="Dataset root.")
@click.option("--extractor", "extractor", type=RegistryChoice("butd.extract.registry:EXTRACTORS"), required=True)
@click.option("--mode", type=click.Choice(["detect", "grid", "boxes"]), default=None,
              help="Default: the extractor's (detect for bua-r101, grid for CNNs).")
@click.option("--weights", default=None,
              help="Weights file (.pth state dict / .safetensors), 'imagenet' or 'random' (tests only). "
                   "Required unless the extractor ships its weights (effnetlite0).")
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
@click.option("--boxes-policy", type=RegistryChoice("butd.extract.selection:POLICIES"), default=None,
              help="Detector: box selection of this original (caffe: generate_tsv.py 10-100 / fixed N; "
                   "airsplay-36: py-bottom-up-attention's 36 boxes). See features_spec.md.")
@click.option("--shard-size", type=int, default=1000, show_default=True, help="Images per shard / work unit.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--image-size", type=int, default=None, help="Grid networks: input side.")
@device_option
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML of the extractor's config fields; command-line options win.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Verify the store at the end.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object (machine-readable).")
@click.option("--verbose", is_flag=True, help="Show Ray's own notices and its workers' output.")
def extract_cmd(dataset: str, root: str, extractor: str, mode: str | None, weights: str | None, out: str,
                address: str | None, workers: int | None, threads: int | None, fp16: bool | None,
                boxes_file: str | None, min_boxes: int | None, max_boxes: int | None,
                conf_thresh: float | None, box_source: str | None, boxes_policy: str | None, shard_size: int,
                batch_size: int,
                image_size: int | None, device: str, config_file: str | None, no_progress: bool,
                verify: bool, as_json: bool, verbose: bool) -> None:
    """Extract features for every image of --dataset under --root into the store --out.

    Exit status: 0 when every image is in the store, 3 when some could not be read (listed in
    OUT/failures.jsonl), 1 when none could.
    """
    from butd.extract.job import extract

    settings = {"mode": mode, "weights": weights, "fp16": fp16, "image_size": image_size, "device": device,
                "min_boxes": min_boxes, "max_boxes": max_boxes, "conf_thresh": conf_thresh, "box_source": box_source,
                "boxes_policy": boxes_policy}
    summary = extract(dataset, root, extractor, out, settings=settings, config_file=config_file,
                      boxes_file=boxes_file, address=address, workers=workers, threads=threads,
                      shard_size=shard_size, batch_size=batch_size, progress=not no_progress, verify=verify,
                      verbose=verbose, log=lambda message: click.echo(message, err=True))
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
    else:
        for line in summary.lines():
            click.echo(line)
    sys.exit(summary.exit_code)


@click.group(cls=LazyGroup)
def weights() -> None:
    """Model weights: convert published checkpoints to safetensors."""


@weights.command("convert")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
def convert_cmd(src: Path, dest: Path) -> None:
    """Convert a published BUTD detector checkpoint (.pkl / .pth) to DEST.safetensors."""
    from butd.extract.detector import convert_weights

    s = convert_weights(src, dest)
    click.echo(f"wrote {s['dest']}: {s['tensors']} tensors, {s['parameters']:,} parameters, "
               f"layout {s['layout']}, {s['renamed']} renamed, {len(s['dropped'])} dropped")
    click.echo(f"sha256 {s['sha256']}")
