"""Fixtures shared by several test modules; each module opts in with `pytestmark = pytest.mark.usefixtures(...)`."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks run much faster on one thread than on two contended ones; restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def torch_seed():
    """The same random weights and inputs in every test, whatever ran before it."""
    torch.manual_seed(0)
