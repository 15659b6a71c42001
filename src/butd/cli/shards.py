"""``butd shards ...`` (info, verify, compare, import, export, publish) and ``butd download``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from butd.cli import LazyGroup
from butd.cli.options import RegistryChoice

__all__ = ["download_cmd", "shards"]

_FORMATS = "butd.shards.importers:IMPORT_FORMATS"
_EXPORTS = "butd.shards.exporters:EXPORT_FORMATS"


@click.group(cls=LazyGroup)
def shards() -> None:
    """Inspect, verify, compare, import, export and publish feature stores."""


@shards.command("info")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
def shards_info(store: Path, as_json: bool) -> None:
    """Summarise STORE from its manifest."""
    from butd.shards import read_manifest

    m = read_manifest(store)
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
        click.echo(f"extractor  {ext.get('name')}")
        if weights_line(ext):
            click.echo(f"weights    {weights_line(ext)}")
    if m.get("source"):
        click.echo(f"source     {json.dumps(m['source'])}")
    click.echo(f"created    {m['created'].get('time')} by butd {m['created'].get('butd_version')}")


def weights_line(ext: dict) -> str | None:
    """The weights a store's extractor ran with, in words (stores made before the `weights` key included);
    None for stores of no trained extractor (imports, the toy oracle)."""
    from butd.shards.manifest import extractor_weights

    words = extractor_weights(ext)
    if words is None:
        return None
    if words == "random":
        return "random (untrained: the features are meaningless, for tests only)"
    sha = ext.get("weights_sha256")
    return words + (f" (sha256 {str(sha)[:16]})" if sha else "")


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


@shards.command("compare")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Largest relative feature difference (max|a-b| / max|b| per box) that still passes.")
@click.option("--min-iou", type=click.FloatRange(0, 1), default=0.99, show_default=True,
              help="Smallest IoU of matched boxes that still passes (region stores).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary and every differing image as JSON.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Differing images listed in the text output.")
def shards_compare(a: Path, b: Path, tolerance: float, min_iou: float, as_json: bool, limit: int) -> None:
    """Compare store A with the reference store B image by image; exit 1 unless within --tolerance."""
    from butd.shards.compare import compare_stores, describe

    result = compare_stores(a, b, tolerance=tolerance, min_iou=min_iou)
    for line in ([json.dumps(result, indent=2)] if as_json else describe(result, limit)):
        click.echo(line)
    if not result["summary"]["ok"]:
        raise SystemExit(1)


@shards.command("import")
@click.option("--format", "fmt", required=True, type=RegistryChoice(_FORMATS))
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
    from butd.shards.importers import import_files

    s = import_files(fmt, list(src), dest, skip_bad=skip_bad, allow_pickle=allow_pickle, ids=ids,
                     feature_dim=feature_dim, max_records=shard_records)
    click.echo(f"imported {s.records} records into {dest}")
    if s.failures:
        click.echo(f"{len(s.failures)} bad row(s) skipped, listed in {dest / 'failures.jsonl'}")
    for name in s.skipped_fields:
        hint = " (pickled: pass --allow-pickle to import objects/attributes from it)" if name == "info" else ""
        click.echo(f"skipped field {name!r}{hint}")


@shards.command("export")
@click.option("--format", "fmt", required=True, type=RegistryChoice(_EXPORTS))
@click.option("--top", type=int, default=None,
              help="Keep at most K boxes per image: the K most confident (objects_conf), else the first K.")
@click.option("--pad", is_flag=True, help="Pad images to a fixed box count (--top K, else the store's most) "
                                          "with zero boxes, for the fixed layouts (hh-h5, lxmert-tsv).")
@click.option("--ids", "ids_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON list of image ids: export only these, in this order (default: the whole store).")
@click.option("--id-format", default=None,
              help="Python format for the ids written, e.g. COCO_val2014_{:012d} (LXMERT, file names).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def shards_export(fmt: str, top: int | None, pad: bool, ids_file: Path | None, id_format: str | None,
                  progress: bool, store: Path, out: Path) -> None:
    """Export STORE as a layout other code reads: OUT is the file (TSV, h5) or folder (npz-dir; rl-dirs:
    OUT_att, OUT_fc, OUT_box) to create. See `butd registries` for the formats."""
    from butd.shards.exporters import export_store, load_ids

    s = export_store(fmt, store, out, top=top, pad=pad, ids=load_ids(ids_file) if ids_file else None,
                     id_format=id_format, progress=progress)
    click.echo(f"exported {s.records} images as {fmt}: {', '.join(str(p) for p in s.outputs)}")
    if s.cut or s.padded:
        click.echo(f"{s.cut} image(s) cut to --top {top}, {s.padded} padded with zero boxes")
    if s.dropped:
        click.echo(f"not in the {fmt} layout, so not written: {', '.join(s.dropped)}")


@shards.command("publish")
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default=None, help="Name recorded in index.json (default: the store dir name).")
@click.option("--url", default=None, help="Base URL OUTDIR will be served at (for the registry entry).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def publish_cmd(store: Path, outdir: Path, name: str | None, url: str | None, progress: bool) -> None:
    """Verify STORE and lay it out in OUTDIR for serving over HTTPS (the store as is, plus index.json)."""
    from butd.shards.publish import publish_store, registry_entry

    index = publish_store(store, outdir, name=name, progress=progress)
    click.echo(f"published {index['name']}: {index['num_records']} records, {index['files']} files, "
               f"{index['total_bytes']} bytes in {outdir}")
    click.echo(f"manifest sha256 {index['manifest_sha256']}")
    entry = registry_entry(index, url or "https://HOST/PATH")
    click.echo("registry entry (serve OUTDIR, then put its base URL in 'url'):")
    click.echo(json.dumps({index["name"]: entry}, indent=2))


@click.command("download")
@click.argument("source", required=False)
@click.option("--to", "to", type=click.Path(file_okay=False, path_type=Path),
              help="Store directory to create (the manifest appears in it only when complete).")
@click.option("--jobs", default=4, show_default=True, type=click.IntRange(1, 64), help="Parallel downloads.")
@click.option("--registry", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Registry JSON whose datasets add to / override the shipped one.")
@click.option("--mirror", default=None, help="Base URL replacing scheme and host of every URL.")
@click.option("--trust-on-first-use", is_flag=True,
              help="Accept an archive with no known sha256 (its sha256 is printed so you can pin it).")
@click.option("--allow-http", is_flag=True, help="Allow plain http to non-loopback hosts.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds without data before a request counts as failed.")
@click.option("--retries", default=5, show_default=True, type=click.IntRange(0, 1000),
              help="Retries per file on drops, timeouts and 5xx (exponential backoff).")
@click.option("--format", "fmt", type=RegistryChoice(_FORMATS), default=None,
              help="Format of a legacy archive (default: the registry entry's; never guessed from the name).")
@click.option("--backoff", default=1.0, show_default=True, type=click.FloatRange(min=0), hidden=True)
@click.option("--list", "list_", is_flag=True,
              help="List the registry's datasets and detector weights with every known source and its status.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def download_cmd(source: str | None, to: Path | None, jobs: int, registry: Path | None, mirror: str | None,
                 trust_on_first_use: bool, allow_http: bool, timeout: float, retries: int, fmt: str | None,
                 backoff: float, list_: bool, progress: bool) -> None:
    """Download SOURCE into the store --to DIR, verified and resumable.

    SOURCE is the base URL of a published store, a registry name (see --list: its sources are tried in
    order and the one that served is named), or the URL of a legacy feature archive (.zip, with --format),
    which is imported into DIR after download.
    """
    from butd.shards.download import download
    from butd.shards.sources import load_registry, source_lines
    from butd.shards.weights_download import download_weights, load_weights_registry

    weights = load_weights_registry(registry)
    if list_:  # every entry, then each of its known locations with its reported status and where it was announced
        for kind, entries in ((None, load_registry(registry)), ("weights", weights)):
            for name, e in sorted(entries.items()):
                pinned = "sha256 pinned" if e.get("sha256") else "no sha256 (--trust-on-first-use prints it)"
                click.echo(f"{name:28s} {kind or e['format']:11s} {pinned}")
                for line in source_lines(e["sources"]):
                    click.echo(line)
        return
    if not source or to is None:
        raise click.UsageError("SOURCE and --to DIR are required (or --list)")
    if source in weights:  # a published detector checkpoint: a plain file into DIR
        path, digest, nbytes = download_weights(
            source, to, registry=registry, mirror=mirror, trust_on_first_use=trust_on_first_use,
            allow_http=allow_http, timeout=timeout, retries=retries, backoff=backoff, progress=progress,
            log=lambda msg: click.echo(msg, err=True))
        click.echo(f"{path}: {nbytes} bytes, sha256 {digest}; next: butd weights convert {path} OUT.safetensors")
        return
    result = download(source, to, jobs=jobs, registry=registry, mirror=mirror,
                      trust_on_first_use=trust_on_first_use, allow_http=allow_http, timeout=timeout,
                      retries=retries, fmt=fmt, backoff=backoff, progress=progress,
                      log=lambda msg: click.echo(msg, err=True))
    click.echo(f"{result.path}: verified, {result.report.records} records ({result.kind} from {result.url})")
