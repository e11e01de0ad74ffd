import numpy as np
import torch
from helpers import SaturationNet, needs_fashion_mnist, poisoned_fashion_mnist

from solo_poisoncam.cluster import kmeans
from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.cam import ClusterActivation
from solo_poisoncam.detect.flip import flip_scores, flip_set
from solo_poisoncam.detect.patchsearch import gradcam_windows, iterative_search
from solo_poisoncam.engine.features import extract_features
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.models.heads import CosineClusterHead


def test_flip_set_takes_the_images_closest_to_each_centroid():
    a = np.array([0, 0, 1, 1, 1, 2])
    s = np.array([0.1, 0.9, 0.5, 0.7, 0.2, 0.3])
    assert flip_set(a, s, 3, size=3).tolist() == [1, 3, 5]  # one per cluster, the highest similarity
    assert flip_set(a, s, 3, size=6).tolist() == [0, 1, 2, 3, 5]  # two per cluster where there are two
    assert len(flip_set(a, s, 3, size=2, seed=0)) == 2  # more clusters than flip images: random clusters


def test_iterative_search_prunes_low_clusters_and_leaves_unscored_at_zero():
    assign = np.repeat(np.arange(8), 10)
    truth = np.where(assign == 5, 10.0, 1.0) + np.arange(80) * 1e-3
    calls = []

    def score_fn(pos):
        calls.append(len(pos))
        return truth[pos]

    scores, scored, rounds = iterative_search(score_fn, assign, 8, samples_per_iteration=2, remove_per_iteration=0.25)
    # 8 clusters -> cut 2 -> 6 -> cut 1 -> 5 -> cut 1 -> 4 -> cut 1 -> 3 -> cut 0: stop
    assert calls == [16, 12, 10, 8, 6] and rounds == 5
    assert scored[assign == 5].sum() == 10  # the high cluster survives every cut and is scored 5 x 2 times
    assert (scores[~scored] == 0).all() and scored.sum() == 52
    assert np.allclose(scores[scored], truth[scored])


@needs_fashion_mnist
def test_flip_test_on_a_backdoored_model():
    data, manifest = poisoned_fashion_mnist(600, patch_size=8)
    model = SaturationNet()
    images = IndexedImages(data)
    feats = extract_features(model, images, Runner(progress=False))
    km = kmeans(feats, 10, seed=0)
    act = ClusterActivation(model, CosineClusterHead(km.centroids, 0.1))
    x = images.as_tensor()
    pos = manifest.indexes[:10]
    clean = np.setdiff1d(np.arange(len(data)), manifest.indexes)[:10]
    clusters = act.logits(x[pos].float() / 255).argmax(1)
    flips = x[torch.as_tensor(flip_set(km.assignments.numpy(), km.scores.numpy(), 10, 40))]
    poison_windows = torch.as_tensor(manifest.boxes[:10])
    s_poison = flip_scores(act, x[pos], poison_windows, clusters, flips, torch.device("cpu"))
    c_boxes, c_clusters, _ = gradcam_windows(act, x[clean].float() / 255, model.feature_layer, [8])
    s_clean = flip_scores(act, x[clean], c_boxes, c_clusters, flips, torch.device("cpu"))
    assert s_poison.min() > 0.8 and s_clean.max() < 0.2  # only a real trigger drags other images along
    counts = flip_scores(act, x[pos], poison_windows, clusters, flips, torch.device("cpu"), normalise=False)
    assert torch.allclose(counts / len(flips), s_poison)


def test_gradcam_matches_the_hand_computed_map():
    """Features = spatial mean of a 2-channel map A, logits = W f: d logit_c / d A_k = W[c, k] / (H W)
    everywhere, so cam = ReLU(sum_k W[c, k] A_k) / (H W), upsampled (here already full size)."""
    class MeanPool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.feature_layer = torch.nn.Identity()

        def forward(self, x):
            return self.feature_layer(x).mean((2, 3))

    model = MeanPool()
    layer = model.feature_layer
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    act = ClusterActivation(model, head)
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, 1, 2] = 1.0  # channel 0: one hot pixel
    x[0, 1, 3, 0] = 0.2  # channel 1
    from solo_poisoncam.detect.patchsearch import gradcam_maps

    cam, clusters = gradcam_maps(act, x, layer)
    # logits: f = (1/16, 0.2/16) -> c0 = 1/16 - 0.4/16 > 0, c1 = 0.5/16 + 0.6/16 -> cluster 1 wins
    assert clusters.tolist() == [1]
    expected = torch.relu(0.5 * x[0, 0] + 3.0 * x[0, 1]) / 16
    assert torch.allclose(cam[0], expected, atol=1e-7)
    boxes = gradcam_windows(act, x, layer, [1])[0]
    assert boxes.tolist() == [[0, 3, 1, 4]]  # 3.0 * 0.2 at (x=0, y=3) beats 0.5 * 1 at (x=2, y=1)
