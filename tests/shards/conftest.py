import numpy as np
import pytest
from store_helpers import region_record

from butd.shards import ShardWriter


@pytest.fixture
def make_store(tmp_path):
    """Write n random region records; returns (path, {id: record})."""

    def _make(n=25, name="store", max_records=7, **kw):
        rng = np.random.default_rng(n)
        recs = {f"img{i:03d}": region_record(rng, **kw) for i in range(n)}
        path = tmp_path / name
        with ShardWriter(path, "region", max_records=max_records) as w:
            for image_id, rec in recs.items():
                w.add(image_id, rec)
        return path, recs

    return _make
