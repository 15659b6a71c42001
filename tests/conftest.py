import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Tiny models: one thread is much faster than contending for busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
