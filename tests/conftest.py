import os
import sys

# wandb reads its mode once, at import: set it before anything imports wandb.
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402

_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_DEVICES)
def device(request) -> torch.device:
    """Every test that takes ``device`` runs on the CPU and, when available, on CUDA."""
    return torch.device(request.param)
