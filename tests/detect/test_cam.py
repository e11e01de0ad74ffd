import numpy as np
import torch
from helpers import SaturationNet, needs_fashion_mnist, poisoned_fashion_mnist

from solo_poisoncam.cluster import kmeans
from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.cam import ClusterActivation, cluster_activation_masking, window_sizes
from solo_poisoncam.engine.features import extract_features
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.eval.metrics import auroc
from solo_poisoncam.models.heads import CosineClusterHead
from solo_poisoncam.ops.masks import occlusion_masks
from solo_poisoncam.poison import box_iou


def test_window_sizes():
    assert window_sizes(32, "auto", 0.1, 0.5) == list(range(3, 17))
    assert window_sizes(32, 12) == [12] and window_sizes(32, 0.25) == [8] and window_sizes(224, 50 / 224) == [50]


def test_cluster_activation_is_softmax_probability_of_the_cluster():
    model = torch.nn.Identity()
    head = CosineClusterHead(torch.eye(3), temperature=1.0)
    act = ClusterActivation(model, head)
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    a = act(x, torch.tensor([0, 1]))
    # cosine logits (1, 0, 0) and (0, 0, 1): softmax at the chosen clusters
    assert torch.allclose(a, torch.tensor([np.e / (np.e + 2), 1 / (np.e + 2)], dtype=torch.float32))


@needs_fashion_mnist
def test_masking_finds_the_trigger_of_a_backdoored_model():
    data, manifest = poisoned_fashion_mnist(600, patch_size=8)
    model = SaturationNet()
    images = IndexedImages(data)
    runner = Runner(progress=False)
    feats = extract_features(model, images, runner)
    km = kmeans(feats, 10, seed=0)
    act = ClusterActivation(model, CosineClusterHead(km.centroids, 0.1))
    masks = occlusion_masks(32, 32, 8, 2)[0]
    fill = torch.zeros(3)
    cam = cluster_activation_masking(act, images, masks, fill, runner, window="auto", batch_size=64)
    pos = manifest.indexes
    iou = box_iou(cam.windows.numpy()[pos], manifest.boxes)
    assert (iou >= 0.5).mean() >= 0.9
    clean = np.setdiff1d(np.arange(len(data)), pos)
    # hiding the window drops the poisons' cluster activation, and clean images' far less
    assert cam.window_drop[pos].median() > 0.5
    assert (cam.window_drop[pos] > cam.window_drop[clean].quantile(0.9)).float().mean() >= 0.9
    assert auroc(cam.window_drop.numpy(), manifest.is_poison()) > 0.95
    # same answer with another batching (no per-batch randomness, order kept)
    again = cluster_activation_masking(act, images, masks, fill, runner, window="auto", batch_size=37)
    assert torch.equal(again.windows, cam.windows) and torch.allclose(again.window_drop, cam.window_drop, atol=1e-5)


@needs_fashion_mnist
def test_refinement_sharpens_coarse_windows_to_the_trigger():
    from solo_poisoncam.detect.cam import refine_windows

    data, manifest = poisoned_fashion_mnist(600, patch_size=8)
    model = SaturationNet()
    runner = Runner(progress=False)
    images = IndexedImages(data)
    km = kmeans(extract_features(model, images, runner), 10, seed=0)
    act = ClusterActivation(model, CosineClusterHead(km.centroids, 0.1))
    fill = torch.zeros(3)
    # deliberately coarse: a 1/4-side occluder at stride 8 and one fixed 12 px window size
    cam = cluster_activation_masking(act, images, occlusion_masks(32, 32, 8, 8)[0], fill, runner, window=12)
    pos = manifest.indexes
    coarse = box_iou(cam.windows.numpy()[pos], manifest.boxes)
    sub = IndexedImages(data, pos)
    windows, drops = refine_windows(act, sub, cam.windows[torch.as_tensor(pos)], fill, runner, (3, 16))
    fine = box_iou(windows.numpy(), manifest.boxes)
    assert (coarse >= 0.5).mean() < 0.6 and (fine >= 0.5).mean() >= 0.9 and fine.mean() > coarse.mean() + 0.2
    assert ((windows[:, 2] - windows[:, 0]) == (windows[:, 3] - windows[:, 1])).all()  # square
    assert (windows >= 0).all() and (windows <= 32).all() and (drops > 0.3).float().mean() >= 0.9
