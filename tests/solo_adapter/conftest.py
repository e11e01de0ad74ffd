"""solo-learn adapter tests (skipped unless solo-learn is importable)."""

import warnings

# solo-learn's import-time noise (timm registry overwrites), not ours to report
warnings.filterwarnings("ignore", message="Overwriting .* in registry", category=UserWarning)
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)  # lightning 2.1.2

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny CPU workloads: with 2 OpenMP threads on a 2-core machine that is also busy, tiny convolutions
    and batch norms spin-wait (measured 40x slower than 1 thread); the subprocesses get OMP_NUM_THREADS=1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
