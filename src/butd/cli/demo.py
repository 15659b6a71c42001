"""``butd toy make``, ``butd demo`` and ``butd registries`` (every registry, as the docs show them)."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["demo_cmd", "registries_cmd", "toy"]

@click.group()
def toy() -> None:
    """The embedded toy world: synthetic images, captions, questions and boxes."""


@toy.command("make")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--images", "n_images", type=int, default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def toy_make(root: Path, n_images: int, seed: int) -> None:
    """Render the toy world into ROOT in the public COCO / Karpathy / VQA / VG layouts."""
    from butd.datasets.toy import ToyConfig, make_toy_world

    summary = make_toy_world(root, ToyConfig(n_images=n_images, seed=seed))
    click.echo(json.dumps(summary, indent=2, default=str))


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo_out"), show_default=True)
@click.option("--images", "n_images", type=int, default=160, show_default=True)
def demo_cmd(out: Path, n_images: int) -> None:
    """Run the main job end to end on the embedded toy data."""
    from butd.demo import run_demo

    run_demo(out, n_images=n_images)


@click.command("registries")
@click.option("--markdown", is_flag=True, help="Markdown tables (as in ARCHITECTURE.md).")
def registries_cmd(markdown: bool) -> None:
    """List every registry: models, extractors, sources, import formats, decoders, schedules, baselines."""
    from butd.registry import REGISTRIES, resolve

    for title, ref in REGISTRIES.items():
        reg = resolve(ref)
        if markdown:
            click.echo(f"\n#### {title} (`{ref.replace(':', '.')}`)\n\n{reg.markdown()}")
        else:
            click.echo(f"{title:23s} {', '.join(reg.names())}")
