import os
import sys
from pathlib import Path

import pytest
import torch

if os.environ.get("BUTD_TEST_DUMMIES") == "1":  # tests/newcomer: run the parametrised tests with the dummies
    sys.path.insert(0, str(Path(__file__).parent / "newcomer"))
    from registry_lines import register_all

    register_all()


@pytest.fixture
def one_torch_thread():
    """Tiny models: one thread is much faster than contending for busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs -n auto) the workers share the cores: split torch's threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


