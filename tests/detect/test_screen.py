"""The cluster screen (poisoncam.screen): which images it samples, which clusters it covers."""

import numpy as np
import pytest

from solo_poisoncam.checks import PoisonCamError
from solo_poisoncam.detect.config import PoisonCamConfig
from solo_poisoncam.detect.poisoncam import _top, cluster_maxima, covered, screen_sample


def test_screen_sample_takes_per_cluster_images_of_each_cluster_and_all_of_a_small_one():
    clusters = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2])
    pos = screen_sample(clusters, 3, seed=0)
    assert list(np.bincount(clusters[pos])) == [3, 2, 3]
    assert (np.diff(pos) > 0).all()
    assert list(screen_sample(clusters, 3, seed=0)) == list(pos)  # seeded
    assert any(list(screen_sample(clusters, 3, seed=s)) != list(pos) for s in range(1, 6))


def test_covered_takes_the_fewest_highest_ranked_clusters_that_hold_cover_images():
    # clusters of 4, 3, 2 and 5 images; sampled maxima 0.1, 0.9, 0.5 and 0.3 -> rank 1, 2, 3, 0
    clusters = np.array([0] * 4 + [1] * 3 + [2] * 2 + [3] * 5)
    sample = np.array([0, 1, 4, 7, 9, 10])
    drop = np.array([0.1, -0.2, 0.9, 0.5, 0.3, 0.0])
    best = cluster_maxima(clusters, sample, drop)
    assert best.tolist() == [0.1, 0.9, 0.5, 0.3]
    assert np.flatnonzero(covered(clusters, best, 3)).tolist() == [4, 5, 6]         # cluster 1 holds 3
    assert np.flatnonzero(covered(clusters, best, 4)).tolist() == [4, 5, 6, 7, 8]   # and cluster 2
    assert covered(clusters, best, 6).sum() == 3 + 2 + 5                            # and cluster 3
    assert covered(clusters, best, 100).all()


def test_top_ranks_only_masked_images():
    drop = np.array([0.9, 0.1, 0.5, 0.7, 0.3])
    masked = np.array([False, True, True, True, True])
    assert _top(drop, masked, 2).tolist() == [2, 3]                  # sorted positions
    assert _top(drop, masked, 2, keep_order=True).tolist() == [3, 2]  # by rank
    assert _top(drop, masked, 10).tolist() == [1, 2, 3, 4]           # never an unmasked image


def test_screen_settings_are_checked():
    with pytest.raises(PoisonCamError, match="screen must be >= 0"):
        PoisonCamConfig(screen=-1)
    with pytest.raises(PoisonCamError, match="screen_cover must be in"):
        PoisonCamConfig(screen_cover=0)
