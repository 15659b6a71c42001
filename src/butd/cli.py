"""The `butd` command line. Each command calls one library function; this is where stages meet."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import click

from butd import __version__


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)


class LazyGroup(click.Group):
    """A group whose heavy subcommands (torch, ray) are imported only when they are used."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, lazy={
    "extract": "butd.extract.extract_cli:extract_cmd",
    "download": "butd.shards.download_cli:download_cmd",
    "train": "butd.cli_tasks:train_cmd",
    "eval": "butd.cli_tasks:eval_cmd",
    "caption": "butd.cli_tasks:caption_cmd",
    "answer": "butd.cli_tasks:answer_cmd",
    "report": "butd.cli_tasks:report_cmd",
})
@click.version_option(__version__, prog_name="butd")
def main() -> None:
    """Bottom-up / top-down attention: extract features into verified shards, train and evaluate."""


# -- shards ---------------------------------------------------------------------------------------
@main.group(cls=LazyGroup, lazy={"publish": "butd.shards.download_cli:publish_cmd"})
def shards() -> None:
    """Inspect, verify, import and export feature stores."""


@shards.command("info")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
def shards_info(store: Path, as_json: bool) -> None:
    """Summarise STORE from its manifest."""
    from butd.shards import StoreError, read_manifest

    try:
        m = read_manifest(store)
    except StoreError as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    size = sum(s["bytes"] for s in m["shards"]) + m["index"]["bytes"]
    click.echo(f"store      {store}")
    click.echo(f"spec       {m['format']} {m['spec_version']}")
    click.echo(f"kind       {m['kind']}")
    click.echo(f"records    {m['num_records']} in {len(m['shards'])} shard(s), {size / 2**20:.1f} MiB")
    click.echo(f"dims       {json.dumps(m['dims'])}")
    ext = m.get("extractor") or {}
    if ext:
        click.echo(f"extractor  {ext.get('name')} (weights sha256 {str(ext.get('weights_sha256'))[:16]})")
    if m.get("source"):
        click.echo(f"source     {json.dumps(m['source'])}")
    click.echo(f"created    {m['created'].get('time')} by butd {m['created'].get('butd_version')}")


@shards.command("verify")
@click.argument("store", type=click.Path(path_type=Path))
def shards_verify(store: Path) -> None:
    """Re-hash every shard and decode every record of STORE; exit 1 on any mismatch."""
    from butd.shards import verify_store

    report = verify_store(store, progress=True)
    if not report.ok:
        for p in report.problems:
            click.echo(f"FAIL {p}", err=True)
        raise SystemExit(1)
    click.echo(f"OK {store}: {report.records} records, {report.bytes_hashed / 2**20:.1f} MiB hashed")


@shards.command("import")
@click.option("--format", "fmt", required=True, type=click.Choice(["pa-tsv", "lxmert-tsv", "hh-h5", "npz-dir"]))
@click.option("--skip-bad", is_flag=True, help="Record bad rows in DEST/failures.jsonl and import the rest.")
@click.option("--allow-pickle", is_flag=True,
              help="Read pickled legacy fields (npz `info`, h5 id index .pkl) with a restricted unpickler.")
@click.option("--ids", type=click.Path(exists=True, path_type=Path),
              help="hh-h5 image-id -> row index (.json, or .pkl with --allow-pickle).")
@click.option("--feature-dim", type=int, help="Reject rows whose feature width differs.")
@click.option("--shard-records", type=int, default=1000, show_default=True, help="Records per shard.")
@click.argument("src", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
def shards_import(fmt, skip_bad, allow_pickle, ids, feature_dim, shard_records, src, dest) -> None:
    """Import SRC... (files, .zip archives or an npz directory) into a new store DEST."""
    from butd.shards import StoreError
    from butd.shards.importers import import_files

    try:
        s = import_files(fmt, list(src), dest, skip_bad=skip_bad, allow_pickle=allow_pickle, ids=ids,
                         feature_dim=feature_dim, max_records=shard_records)
    except StoreError as exc:
        raise _fail(exc) from None
    click.echo(f"imported {s.records} records into {dest}")
    if s.failures:
        click.echo(f"{len(s.failures)} bad row(s) skipped, listed in {dest / 'failures.jsonl'}")
    for name in s.skipped_fields:
        hint = " (pickled: pass --allow-pickle to import objects/attributes from it)" if name == "info" else ""
        click.echo(f"skipped field {name!r}{hint}")


@shards.command("export")
@click.option("--format", "fmt", required=True, type=click.Choice(["hh-h5"]))
@click.argument("store", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def shards_export(fmt: str, store: Path, out: Path) -> None:
    """Export STORE to OUT (hh-h5 also writes OUT's stem + .ids.json)."""
    from butd.shards import FeatureStore, StoreError
    from butd.shards.importers.h5 import export_hh_h5

    try:
        export_hh_h5(FeatureStore(store), out)
    except StoreError as exc:
        raise _fail(exc) from None
    click.echo(f"wrote {out} and {out.with_suffix('.ids.json')}")


@main.group(cls=LazyGroup, lazy={"convert": "butd.extract.weights:convert_cmd"})
def weights() -> None:
    """Model weights: convert published checkpoints to safetensors."""


# -- toy world ------------------------------------------------------------------------------------
@main.group()
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


@main.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo_out"), show_default=True)
@click.option("--images", "n_images", type=int, default=160, show_default=True)
def demo(out: Path, n_images: int) -> None:
    """Run the main job end to end on the embedded toy data."""
    from butd.demo import run_demo

    run_demo(out, n_images=n_images)


if __name__ == "__main__":
    main()
