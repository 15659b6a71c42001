"""Readers of the bottom-up-attention TSV (pa-tsv) and the LXMERT TSV, plain, multi-file or zipped."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from tqdm import tqdm

from butd.shards.importers.common import Row, RowParseError, b64_array, per_box, to_int
from butd.shards.spec import StoreError, scalar

PA_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
LXMERT_FIELDS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
                 "num_boxes", "boxes", "features")
_TSV_MEMBER = re.compile(r"\.tsv(\.\d+)?$")


def _streams(sources: list[Path], stack: ExitStack) -> Iterator[tuple[str, IO[bytes], int]]:
    """Yield (display name, binary stream, size) for each TSV, looking inside .zip archives."""
    for src in sources:
        if zipfile.is_zipfile(src):
            zf = stack.enter_context(zipfile.ZipFile(src))
            members = sorted((i for i in zf.infolist() if _TSV_MEMBER.search(i.filename)), key=_member_order)
            if not members:
                raise StoreError(f"{src}: the archive holds no *.tsv or *.tsv.N file")
            for info in members:
                yield f"{src}!{info.filename}", stack.enter_context(zf.open(info)), info.file_size
        else:
            yield str(src), stack.enter_context(open(src, "rb")), src.stat().st_size


def _member_order(info: zipfile.ZipInfo) -> tuple[str, int]:
    """Order `x.tsv.2` before `x.tsv.10`."""
    m = _TSV_MEMBER.search(info.filename)
    part = m.group(1)
    return info.filename[: m.start()], int(part[1:]) if part else -1


def _sizes(sources: list[Path]) -> int:
    total = 0
    for src in sources:
        if zipfile.is_zipfile(src):
            with zipfile.ZipFile(src) as zf:
                total += sum(i.file_size for i in zf.infolist() if _TSV_MEMBER.search(i.filename))
        else:
            total += src.stat().st_size
    return total


def _rows(sources: list[Path], nfields: int, parse, progress: bool) -> Iterator[Row]:
    bar = tqdm(total=_sizes(sources), unit="B", unit_scale=True, desc="importing", disable=None if progress else True)
    with ExitStack() as stack:
        for name, stream, _ in _streams(sources, stack):
            for lineno, line in enumerate(stream, 1):
                bar.update(len(line))
                where = f"{name}:{lineno}"
                fields = line.rstrip(b"\r\n").split(b"\t")
                if fields == [b""]:
                    continue  # tolerate blank lines (e.g. a trailing newline pair)
                image_id = fields[0].decode("utf-8", "replace") or None
                if len(fields) != nfields:
                    yield Row(image_id, where, error=f"expected {nfields} tab-separated fields, got {len(fields)}"
                              " (truncated line?)")
                    continue
                try:
                    yield Row(image_id, where, record=parse(fields))
                except RowParseError as exc:
                    yield Row(image_id, where, error=str(exc))
    bar.close()


def _parse_pa(fields: list[bytes]) -> dict:
    _, w, h, n, boxes, feats = fields
    n = to_int(n, "num_boxes")
    return {
        "boxes": per_box(b64_array(boxes, "<f4", "boxes"), n, 4, "boxes"),
        "features": per_box(b64_array(feats, "<f4", "features"), n, 0, "features"),
        "num_boxes": scalar(n),
        "image_w": scalar(to_int(w, "image_w")),
        "image_h": scalar(to_int(h, "image_h")),
    }


def _parse_lxmert(fields: list[bytes]) -> dict:
    _, h, w, oid, oconf, aid, aconf, n, boxes, feats = fields
    n = to_int(n, "num_boxes")
    return {
        "boxes": per_box(b64_array(boxes, "<f4", "boxes"), n, 4, "boxes"),
        "features": per_box(b64_array(feats, "<f4", "features"), n, 0, "features"),
        "num_boxes": scalar(n),
        "image_w": scalar(to_int(w, "img_w")),
        "image_h": scalar(to_int(h, "img_h")),
        "objects_id": per_box(b64_array(oid, "<i8", "objects_id"), n, None, "objects_id"),
        "objects_conf": per_box(b64_array(oconf, "<f4", "objects_conf"), n, None, "objects_conf"),
        "attrs_id": per_box(b64_array(aid, "<i8", "attrs_id"), n, None, "attrs_id"),
        "attrs_conf": per_box(b64_array(aconf, "<f4", "attrs_conf"), n, None, "attrs_conf"),
    }


def read_pa_tsv(sources: list[Path], *, progress: bool = True, **_) -> Iterator[Row]:
    """bottom-up-attention TSV: image_id, image_w, image_h, num_boxes, boxes, features."""
    return _rows(sources, len(PA_FIELDS), _parse_pa, progress)


def read_lxmert_tsv(sources: list[Path], *, progress: bool = True, **_) -> Iterator[Row]:
    """LXMERT TSV: img_id, img_h, img_w, objects_id/conf, attrs_id/conf, num_boxes, boxes, features."""
    return _rows(sources, len(LXMERT_FIELDS), _parse_lxmert, progress)
