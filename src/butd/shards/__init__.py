"""The feature-store contract between extraction and training (see features_spec.md)."""

from butd.shards.codec import decode, encode
from butd.shards.manifest import read_manifest, sha256_file
from butd.shards.spec import (
    SPEC_VERSION,
    DecodeError,
    DuplicateKeyError,
    IncompleteStoreError,
    RecordError,
    StoreError,
    scalar,
    validate_record,
)
from butd.shards.store import FeatureStore
from butd.shards.verify import VerifyReport, verify_store
from butd.shards.writer import ShardWriter

__all__ = [
    "SPEC_VERSION",
    "DecodeError",
    "DuplicateKeyError",
    "FeatureStore",
    "IncompleteStoreError",
    "RecordError",
    "ShardWriter",
    "StoreError",
    "VerifyReport",
    "decode",
    "encode",
    "read_manifest",
    "scalar",
    "sha256_file",
    "validate_record",
    "verify_store",
]
