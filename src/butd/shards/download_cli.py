"""Click commands `butd shards publish` and `butd download` (registered by butd.cli)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from butd.shards.download import ARCHIVE_FORMATS, download
from butd.shards.publish import load_registry, publish_store, registry_entry
from butd.shards.spec import StoreError
from butd.shards.weights_download import download_weights, load_weights_registry


@click.command("publish")
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default=None, help="Name recorded in index.json (default: the store dir name).")
@click.option("--url", default=None, help="Base URL OUTDIR will be served at (for the registry entry).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def publish_cmd(store: Path, outdir: Path, name: str | None, url: str | None, progress: bool) -> None:
    """Verify STORE and lay it out in OUTDIR for serving over HTTPS (the store as is, plus index.json)."""
    try:
        index = publish_store(store, outdir, name=name, progress=progress)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
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
@click.option("--format", "fmt", type=click.Choice(ARCHIVE_FORMATS), default=None,
              help="Format of a legacy archive (default: from the registry, or guessed from the name).")
@click.option("--backoff", default=1.0, show_default=True, type=click.FloatRange(min=0), hidden=True)
@click.option("--list", "list_", is_flag=True, help="List the registry's datasets and detector weights, and exit.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def download_cmd(source: str | None, to: Path | None, jobs: int, registry: Path | None, mirror: str | None,
                 trust_on_first_use: bool, allow_http: bool, timeout: float, retries: int, fmt: str | None,
                 backoff: float, list_: bool, progress: bool) -> None:
    """Download SOURCE into the store --to DIR, verified and resumable.

    SOURCE is the base URL of a published store, a registry name (see --list), or the URL
    of a legacy feature archive (.zip), which is imported into DIR after download.
    """
    try:
        weights = load_weights_registry(registry)
        if list_:
            for name, e in sorted(load_registry(registry).items()):
                pinned = "sha256 pinned" if e.get("sha256") else "no sha256"
                click.echo(f"{name:28s} {e['format']:11s} {pinned:14s} {e['url']}")
            for name, e in sorted(weights.items()):
                pinned = "sha256 pinned" if e.get("sha256") else "no sha256"
                click.echo(f"{name:28s} {'weights':11s} {pinned:14s} {e['url']}")
            return
        if not source or to is None:
            raise click.UsageError("SOURCE and --to DIR are required (or --list)")
        if source in weights:  # a detector checkpoint: a plain file into DIR
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
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{result.path}: verified, {result.report.records} records ({result.kind} from {result.url})")
