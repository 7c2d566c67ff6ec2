import numpy as np
import pytest
import torch

# Tiny networks run fastest on one thread, and a second thread only spins when the machine is busy.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
