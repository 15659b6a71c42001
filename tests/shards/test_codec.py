import pickle

import numpy as np
import pytest
from safetensors.numpy import load as st_load

from butd.shards import DecodeError, decode, encode, scalar


def _record(rng):
    return {
        "boxes": rng.random((7, 4), dtype=np.float32),
        "features": rng.standard_normal((7, 33)).astype(np.float16),
        "num_boxes": scalar(7),
        "image_w": scalar(640),
        "objects_id": rng.integers(0, 1600, 7).astype(np.int64),
        "empty": np.zeros((0, 5), np.float32),
    }


def test_decode_equals_reference_loader_bit_for_bit():
    rng = np.random.default_rng(0)
    for _ in range(20):
        rec = _record(rng)
        blob = encode(rec)
        ours, ref = decode(blob), st_load(blob)
        assert set(ours) == set(ref) == set(rec)
        for k in rec:
            assert ours[k].dtype == ref[k].dtype == rec[k].dtype
            assert ours[k].shape == ref[k].shape == rec[k].shape
            assert ours[k].tobytes() == ref[k].tobytes() == rec[k].tobytes()


def test_decode_is_a_read_only_view_not_a_copy():
    blob = bytearray(encode({"x": np.arange(4, dtype=np.float32)}))
    arr = decode(blob)["x"]
    blob[-4:] = np.float32(42).tobytes()  # mutate the underlying buffer
    assert arr[-1] == 42  # the array saw it: no copy was made
    ro = decode(bytes(blob))["x"]
    assert not ro.flags.writeable


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/should-never-exist",))


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps({"features": np.zeros(3)}),
        pickle.dumps(_Boom()),
        b"",
        b"\x00" * 7,
        (2**40).to_bytes(8, "little") + b"{}",
        np.random.default_rng(1).bytes(4096),
    ],
)
def test_foreign_or_corrupt_bytes_are_rejected(payload):
    with pytest.raises(DecodeError):
        decode(payload)


def _with_header(header: bytes, data: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header + data


@pytest.mark.parametrize(
    "header",
    [
        b'{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',  # no butd metadata
        b'{"__metadata__":{"format":"butd-record","version":"1"},"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}',
        b'{"__metadata__":{"format":"butd-record","version":"1"},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,99]}}',
        b'{"__metadata__":{"format":"butd-record","version":"1"},"x":{"dtype":"OBJ","shape":[2],"data_offsets":[0,8]}}',
        b'{"__metadata__":{"format":"butd-record","version":"1"},"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}',
        b'{"__metadata__":{"format":"butd-record","version":"1"},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"y":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',  # overlapping
        b'{"__metadata__":{"format":"butd-record","version":"1"},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    ],
)
def test_malformed_headers_are_rejected(header):
    with pytest.raises(DecodeError):
        decode(_with_header(header, b"\x00" * 8))
