"""The data-parallel path (Lightning Fabric DDP, gloo on CPU) gives the single-process answer."""

import numpy as np
import pytest
from helpers import detection_worker, needs_fashion_mnist

CFG = {"num_clusters": 10, "occluder_stride": 1 / 8, "flip_images": 20, "flip_top": 30, "remove": "none"}


@needs_fashion_mnist
def test_two_process_ddp_matches_single_process():
    import lightning as L

    single = detection_worker(0, CFG, 300)
    fabric = L.Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
    multi = fabric.launch(detection_worker, CFG, 300)
    assert single["world"] == 1 and multi["world"] == 2
    assert np.array_equal(multi["clusters"], single["clusters"])
    assert np.array_equal(multi["windows"], single["windows"])
    assert np.allclose(multi["scores"], single["scores"], atol=1e-5)
    assert multi["metrics"]["auroc"] == pytest.approx(single["metrics"]["auroc"])
