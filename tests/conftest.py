import os

import numpy as np
import pytest
import torch

# Small tensors on a shared 2-core machine run faster on one thread (less contention).
torch.set_num_threads(1)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture
def one_thread():
    """One torch thread for the test (restored after): tests that train or time share the CPU with others."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty cedm home; CEDM_HOME points at it so nothing touches the user's real data folder."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("CEDM_HOME", str(h))
    return h


@pytest.fixture
def tiny_images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(10, 16, 16, 3), dtype=np.uint8)
