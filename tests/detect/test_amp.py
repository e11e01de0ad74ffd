"""Autocast (amp = bf16) on CPU: maps and windows close to float32, never around Grad-CAM, and keyed in the cache."""

import numpy as np
import pytest
import torch

from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.cam import cluster_activation, masked_maps
from solo_poisoncam.detect.config import DetectConfig, PoisonCamConfig
from solo_poisoncam.detect.patchsearch import gradcam_maps
from solo_poisoncam.detect.pipeline import run_detection
from solo_poisoncam.detect.poisoncam import build_masks
from solo_poisoncam.engine.cache import StageCache
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.models.backbones import create_backbone
from solo_poisoncam.models.heads import CosineClusterHead
from solo_poisoncam.models.threat_model import ThreatModel
from solo_poisoncam.poison.manifest import box_iou
from test_verdict import generated  # noqa: E402  (tests/detect on the path)

BF16_MAP_ATOL = 0.02      # activation maps are in [0, 1] units of a_c
BF16_WINDOW_IOU = 0.8     # mean IoU of the candidate windows, bf16 vs float32


def cnn(seed=0):
    torch.manual_seed(seed)
    cfg = {"backbone": {"name": "cnn_small", "kwargs": {}}, "data": {"image_size": 32}}
    return ThreatModel(create_backbone("cnn_small"), (0.5,) * 3, (0.25,) * 3, cfg, "random-init").eval()


@pytest.fixture(scope="module")
def setup():
    model = cnn()
    data = generated(96)
    x = IndexedImages(data, size=32).as_tensor().float() / 255
    with torch.no_grad():
        feats = torch.nn.functional.normalize(model(x), dim=1)
    head = CosineClusterHead(feats[::12].clone(), 0.1)
    return model, data, x, cluster_activation(model, head.state_dict(), 0.1)


def test_bf16_maps_and_windows_stay_close_to_float32(setup):
    model, _, x, act = setup
    runner = Runner(torch.device("cpu"), progress=False)
    masks = build_masks(PoisonCamConfig(), 32)
    fill = model.mean.flatten()
    with torch.no_grad():
        clusters, base = act.own_cluster(x)
        ref = masked_maps(act, x, clusters, base, masks, fill, 4096)
        with runner.autocast("bf16"):
            c16, b16 = act.own_cluster(x)
            low = masked_maps(act, x, clusters, b16, masks, fill, 4096)
    assert low.dtype == torch.float32  # the head runs in float32 whatever the autocast
    assert (c16 == clusters).float().mean() >= 0.95
    err = (low - ref).abs().max().item()
    assert err < BF16_MAP_ATOL, err
    assert err > 0  # bf16 did run: the maps are not bit-identical
    from solo_poisoncam.detect.window import best_window
    sizes = list(range(3, 17))
    w32, w16 = best_window(ref, sizes)[0], best_window(low, sizes)[0]
    iou = box_iou(w32.numpy(), w16.numpy()).mean()
    assert iou >= BF16_WINDOW_IOU, iou


def test_gradcam_ignores_the_callers_autocast(setup):
    model, _, x, act = setup
    ref, c = gradcam_maps(act, x[:16], model.feature_layer)
    with Runner(torch.device("cpu")).autocast("bf16"):
        again, c2 = gradcam_maps(act, x[:16], model.feature_layer)
    assert torch.equal(c, c2) and torch.allclose(ref, again, atol=1e-6)


def test_precision_and_device_are_part_of_every_cache_key(setup, tmp_path):
    model, data, _, _ = setup
    cfg = {"num_clusters": 8, "flip_images": 16, "flip_top": 20, "null_windows": 20, "remove": "none",
           "occluder_stride": 0.25}
    run_detection(model, data, DetectConfig.from_dict(cfg), Runner(progress=False), StageCache(tmp_path))
    again = run_detection(model, data, DetectConfig.from_dict(cfg), Runner(progress=False), StageCache(tmp_path))
    assert all(again.timings["cache_hits"].values())
    bf = run_detection(model, data, DetectConfig.from_dict({**cfg, "amp": "bf16"}), Runner(progress=False),
                       StageCache(tmp_path))
    assert not any(bf.timings["cache_hits"].values())  # a float32 cache is never reused under autocast
    assert bf.config["amp"] == "bf16" and np.isfinite(bf.scores).all()
    stored = [torch.load(f, weights_only=False)["key"] for f in sorted(tmp_path.glob("cam-*.pt"))]
    # the features stage's key (every later key holds it) names the precision and the device
    assert sorted(k["features"]["amp"] for k in stored) == ["bf16", "off"]
    assert {k["features"]["device"] for k in stored} == {"cpu"}


def test_amp_is_checked():
    with pytest.raises(Exception, match="amp must be one of off, bf16, fp16"):
        DetectConfig(amp="half")
