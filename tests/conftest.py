import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run unit tests on one torch thread: their tensors are tiny, and with two threads on a busy
    2-core machine a single small U-Net forward pass was measured at 9 s against 0.1 s on one thread
    (the two pytest workers already use both cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
