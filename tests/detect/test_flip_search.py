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
    truth = np.where(assign == 5, 10, 1)
    calls = []

    def score_fn(pos):
        calls.append(len(pos))
        return truth[pos]

    scores, scored, rounds = iterative_search(score_fn, assign, 8, samples_per_iteration=2, remove_per_iteration=0.25)
    # 8 clusters -> cut int(2.0) -> 6 -> cut 1 -> 5 -> 1 -> 4 -> 1 -> 3 -> cut int(0.75) = 0: the official
    # slice [:-0] keeps no cluster, so the search ends after the fifth round
    assert calls == [16, 12, 10, 8, 6] and rounds == 5
    assert scored[assign == 5].sum() == 10  # the high cluster survives every cut and is scored 5 x 2 times
    assert (scores[~scored] == 0).all() and scored.sum() == 52
    assert np.array_equal(scores[scored], truth[scored])


def test_iterative_search_keeps_exhausted_clusters_and_counts_unscored_as_zero():
    """Hand-computed run of the official rules: cluster 0 has 1 image (exhausted after round 1 but
    still a candidate, so it still counts in the cut), cluster 1 scores -3 and -1 (its max, -1, ranks
    below the unscored-so-far cluster 2, which counts 0), cluster 3 scores 4."""
    assign = np.array([0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    truth = np.array([2, -3, -1, 0, 0, 0, 0, 4, 4, 4, 4])
    calls = []

    def score_fn(pos):
        calls.append(sorted(assign[pos].tolist()))
        return truth[pos]

    scores, scored, rounds = iterative_search(score_fn, assign, 4, samples_per_iteration=2, remove_per_iteration=0.5)
    # round 1: clusters 0 (1 image), 1, 2, 3 (2 each); ranks 3 (4) > 0 (2) > 2 (0) > 1 (-1); cut 2 -> {3, 0}
    # round 2: cluster 0 is exhausted, cluster 3 gives its last 2; cut int(1.0) = 1 -> {3}
    # round 3: cluster 3 is exhausted too: no image, the search ends
    assert calls == [[0, 1, 1, 2, 2, 3, 3], [3, 3]] and rounds == 2
    assert scored.sum() == 9 and scored[assign == 3].all() and not scored[assign == 2].all()
    # without pruning (the official run without --prune_clusters) every image is scored
    _, every, _ = iterative_search(lambda pos: truth[pos], assign, 4, samples_per_iteration=2,
                                   remove_per_iteration=0)
    assert every.all()


def test_l2_flip_counts_match_a_hand_count():
    """Identity model on 1 x 1 'images' with 3 channels: features = pixel values. Centroids at 0.1 and
    0.9 (grey) by L2; the candidate's 1 x 1 window is a white pixel, so every pasted test image moves
    to centroid 1. Two of four test images were there already: count 4 - 2 = 2."""
    from solo_poisoncam.detect.patchsearch import l2_flip_counts

    class Flat(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    centroids = torch.tensor([[0.1] * 3, [0.9] * 3])
    cand = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    tests = torch.tensor([0, 0, 230, 255], dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 1, 1).contiguous()
    counts = l2_flip_counts(Flat(), centroids, cand, torch.tensor([[0, 0, 1, 1]]), torch.tensor([1]), tests,
                            torch.tensor([0, 0, 1, 1]), torch.device("cpu"))
    assert counts.tolist() == [2.0]
    # raw features by L2, not cosine: a pasted pixel (1, 0, 0.75) x 2 lies closer in angle to centroid 0 at
    # (0.2, 0, 0) but nearer by L2 to centroid 1 at (0, 0, 1): no pasted image lands in cluster 0, and the
    # four test images that were there leave it (0 - 4); the cosine rule would count 4 - 4 = 0
    class Double(torch.nn.Module):
        def forward(self, x):
            return 2 * x.flatten(1)

    cand = torch.tensor([255, 0, 191], dtype=torch.uint8).view(1, 3, 1, 1)
    counts = l2_flip_counts(Double(), torch.tensor([[0.2, 0, 0], [0, 0, 1.0]]), cand, torch.tensor([[0, 0, 1, 1]]),
                            torch.tensor([0]), tests, torch.zeros(4, dtype=torch.long), torch.device("cpu"))
    assert counts.tolist() == [-4.0]


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
