"""Full verification of a store: hashes first, then every record decoded and checked."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from butd.shards.codec import decode
from butd.shards.manifest import read_manifest, sha256_file
from butd.shards.spec import RecordError, StoreError, validate_record
from butd.shards.writer import open_lmdb_file


@dataclass
class VerifyReport:
    path: Path
    records: int = 0
    bytes_hashed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path: str | Path, *, progress: bool = False) -> VerifyReport:
    """Re-hash every file the manifest lists, then decode and schema-check every record.

    A file whose hash or size is wrong is never opened with LMDB (a corrupt B-tree is not
    something to walk). Returns a report; `report.ok` is False on any mismatch.
    """
    path = Path(path)
    report = VerifyReport(path)
    try:
        m = read_manifest(path)
    except StoreError as exc:
        report.problems.append(str(exc))
        return report
    entries = [*m["shards"], m["index"]]
    total = sum(int(e.get("bytes", 0)) for e in entries)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="hashing", disable=None if progress else True, leave=False)
    for e in entries:
        f = path / e["file"]
        if not f.is_file():
            report.problems.append(f"{e['file']}: missing")
            continue
        size = f.stat().st_size
        if size != e["bytes"]:
            report.problems.append(f"{e['file']}: {size} bytes, manifest says {e['bytes']} (truncated or replaced)")
            continue
        digest = sha256_file(f, progress=bar.update)
        report.bytes_hashed += size
        if digest != e["sha256"]:
            report.problems.append(
                f"{e['file']}: sha256 {digest[:16]}… does not match the manifest's {e['sha256'][:16]}…")
            continue
    bar.close()
    if report.problems:
        return report
    _check_records(path, m, report, progress)
    return report


def _check_records(path: Path, m: dict, report: VerifyReport, progress: bool) -> None:
    dims = m["dims"]
    index = open_lmdb_file(path / m["index"]["file"], write=False)
    bar = tqdm(total=int(m["num_records"]), unit="rec", desc="decoding", disable=None if progress else True,
               leave=False)
    try:
        with index.begin() as itxn:
            n_index = itxn.stat()["entries"]
            for number, s in enumerate(m["shards"]):
                env = open_lmdb_file(path / s["file"], write=False)
                n = 0
                with env.begin() as txn:
                    for key, value in txn.cursor():
                        n += 1
                        where = f"{s['file']}: record {key.decode('utf-8', 'replace')!r}"
                        try:
                            rec = decode(value)
                            bound = validate_record(m["kind"], rec)
                        except RecordError as exc:
                            report.problems.append(f"{where}: {exc}")
                            continue
                        if bound["D"] != dims["feature_dim"] or rec["features"].dtype.name != dims["feature_dtype"]:
                            report.problems.append(f"{where}: features {rec['features'].shape} "
                                                   f"{rec['features'].dtype} disagree with the manifest dims")
                        loc = itxn.get(key)
                        if loc is None or struct.unpack("<I", loc)[0] != number:
                            report.problems.append(f"{where}: index does not point to this shard")
                        bar.update(1)
                del env
                if n != s["records"]:
                    report.problems.append(f"{s['file']}: {n} records, manifest says {s['records']}")
                report.records += n
    finally:
        bar.close()
    if report.records != m["num_records"]:
        report.problems.append(f"store has {report.records} records, manifest says {m['num_records']}")
    if n_index != report.records:
        report.problems.append(f"index has {n_index} entries for {report.records} records")
