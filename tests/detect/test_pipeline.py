import re
import sys

import numpy as np
import pytest
from helpers import SaturationNet, needs_fashion_mnist, poisoned_fashion_mnist, tiny_dataset

from solo_poisoncam import PoisonCamError
from solo_poisoncam.data.base import ArrayImageDataset
from solo_poisoncam.detect.config import DetectConfig, PoisonCamConfig
from solo_poisoncam.detect.pipeline import run_detection
from solo_poisoncam.engine.cache import StageCache
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.eval.detection import score_detection
from solo_poisoncam.poison import PoisonedDataset

# one occluder side: these tests count masked forwards and compare passes, not the sides (test_masks.py)
FAST = {"num_clusters": 10, "occluder": 0.25, "occluder_stride": 1 / 16, "coarse_stride": None, "flip_images": 40, "flip_top": 60, "remove": "classifier",
        "classifier": {"models": 1, "iters": 150, "batch_size": 32}}


@pytest.fixture(scope="module")
def poisoned():
    return poisoned_fashion_mnist(600, patch_size=8)


@needs_fashion_mnist
def test_poisoncam_end_to_end_on_a_backdoored_model(poisoned, tmp_path, capsys):
    data, manifest = poisoned
    cache = StageCache(tmp_path / "cache")
    r = score_detection(run_detection(SaturationNet(), data, DetectConfig.from_dict(FAST), Runner(progress=False),
                                      cache), manifest)
    # no bars (progress off), still plain lines on stderr: one as each stage starts, one as it ends (its
    # seconds and peak memory), one per classifier model
    err = capsys.readouterr().err.splitlines()
    started = [line.split(" ...")[0].split()[-1] for line in err if " ..." in line]
    stages = [line.split(":")[0].split()[-1] for line in err if re.search(r": [0-9.]+ s\b", line)]
    assert stages[:3] == ["features", "kmeans", "masking"] and "classifier" in stages
    assert started == [s for s in stages if s in started] and started[:3] == stages[:3]
    assert any("poison classifier: model 1/1 trained in" in line for line in err) and "\r" not in "".join(err)
    m = r.metrics
    assert m["num_poisons"] == 30 and m["num_samples"] == 600
    assert m["auroc"] > 0.95 and m["precision_at_20"] >= 0.9
    assert m["trigger_detection_accuracy"] >= 0.9 and m["localisation_all"]["count"] == 30
    assert m["recall"] >= 0.9 and m["precision"] >= 0.5  # the classifier generalises from the top-20 triggers
    assert set(r.timings) >= {"features_s", "kmeans_s", "masking_s", "classifier_s", "masked_forwards_per_s",
                              "masking_overhead", "device"}
    assert r.timings["masked_forwards"] == 600 * 169
    if sys.platform.startswith("linux"):  # each outermost stage's peak host memory (a Python process: > 50 MiB)
        assert set(r.timings["peak_rss_mb"]) == {"features", "kmeans", "masking", "refine", "flip", "verdict", "classifier"}
        assert min(r.timings["peak_rss_mb"].values()) > 50
    # a second run is served from the cache, stage by stage, with identical outputs
    again = run_detection(SaturationNet(), data, DetectConfig.from_dict(FAST), Runner(progress=False),
                          StageCache(tmp_path / "cache"))
    assert all(again.timings["cache_hits"].values())
    # each stage's compute time travels with its cache entry: read back, not re-measured
    assert set(r.timings["stage_compute_s"]) == set(again.timings["cache_hits"])
    assert all(isinstance(v, float) for v in r.timings["stage_compute_s"].values())
    assert again.timings["stage_compute_s"] == r.timings["stage_compute_s"]
    assert np.array_equal(again.scores, r.scores) and np.array_equal(again.removed, r.removed)
    # another setting misses only from the stage it changes
    other = run_detection(SaturationNet(), data, DetectConfig.from_dict({**FAST, "score": "drop", "remove": "none"}),
                          Runner(progress=False), StageCache(tmp_path / "cache"))
    hits = other.timings["cache_hits"]
    assert hits["features"] and hits["kmeans"] and hits["cam"] and "flip" not in hits
    assert np.array_equal(other.scores, r.scores) is False and other.metrics["num_removed"] == 0
    # outputs of the second detection into the first one's folder: nothing of the first survives
    from solo_poisoncam.data.indexed import IndexedImages
    from solo_poisoncam.detect.outputs import write_detection_outputs

    out, images = tmp_path / "out", IndexedImages(data, size=32)
    write_detection_outputs(r, out, images)
    assert (out / "probability.npy").is_file() and (out / "gallery.png").is_file()
    other.config["gallery"] = 0
    write_detection_outputs(other, out, images)
    assert not (out / "probability.npy").exists() and not (out / "gallery.png").exists()
    assert (out / "removed.txt").read_text().strip() == ""


@needs_fashion_mnist
def test_patchsearch_runs_its_own_clustering_window_and_search(poisoned, tmp_path, capsys):
    data, manifest = poisoned
    cfg = DetectConfig.from_dict({**FAST, "method": "patchsearch", "test_images_size": 40})
    assert cfg.window == 60 / 224  # the official fixed window_w, 60 px at 224
    cache = StageCache(tmp_path / "cache")
    r = score_detection(run_detection(SaturationNet(), data, cfg, Runner(progress=False), cache), manifest)
    # its stage lines name PatchSearch, not PoisonCAM
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("[patchsearch] features") for line in lines)
    assert any(line.startswith("[patchsearch] gradcam") for line in lines)
    assert not any(line.startswith("[poisoncam]") for line in lines)
    side = round(60 / 224 * 32)
    assert ((r.windows[:, 2:] - r.windows[:, :2]) == side).all()
    # its own k-means (L2, random init): not the cached spherical one PoisonCAM uses
    run_detection(SaturationNet(), data, DetectConfig.from_dict({**FAST, "remove": "none", "score": "drop"}),
                  Runner(progress=False), cache)
    assert len(list((tmp_path / "cache").glob("kmeans-*.pt"))) == 2
    scored = r.scored
    assert 0 < scored.sum() < len(data)  # iterative search scores a subset ...
    assert (r.scores[~scored] == 0).all()  # ... and leaves the rest at 0, like its code
    assert r.metrics["localisation_all"]["count"] == 30 and "auroc" in r.metrics
    assert "search_s" in r.timings and "gradcam_s" in r.timings
    assert np.array_equal(np.unique(r.scores[scored]), np.unique(r.scores[scored]).round())  # integer counts


@needs_fashion_mnist
def test_fine_count_follows_the_coarse_share_and_the_flip_candidates():
    from solo_poisoncam.detect.poisoncam import fine_count

    cfg = DetectConfig().poisoncam  # coarse 0.25 -> fine 0.125: 20% of the images, at least flip_top = 200
    assert fine_count(cfg, 5000) == 1000 and fine_count(cfg, 20000) == 4000 and fine_count(cfg, 5085) == 1017
    assert fine_count(cfg, 600) == 200 and fine_count(cfg, 150) == 150  # the flip candidates all masked finely
    assert fine_count(PoisonCamConfig(coarse_top=0.05, flip_top=10), 1000) == 50
    # one pass: no coarse stride, a coarse stride no coarser than the full one, or RISE masks alone
    assert fine_count(PoisonCamConfig(coarse_stride=None), 5000) == 5000
    assert fine_count(PoisonCamConfig(occluder_stride=0.25), 5000) == 5000
    assert fine_count(PoisonCamConfig(masks="rise"), 5000) == 5000
    with pytest.raises(PoisonCamError, match="coarse_top must be in"):
        PoisonCamConfig(coarse_top=0)
    with pytest.raises(PoisonCamError, match="coarse_stride must be a share of the side in"):
        PoisonCamConfig(coarse_stride=1.5)


@needs_fashion_mnist
def test_coarse_to_fine_masks_the_top_coarse_images_exactly_as_one_pass(poisoned, tmp_path):
    data, _ = poisoned
    base = {**FAST, "score": "drop", "refine": 0, "flip_top": 0, "remove": "none", "screen": 0}  # every image

    def detect(**kw):
        return run_detection(SaturationNet(), data, DetectConfig.from_dict({**base, **kw}), Runner(progress=False),
                             StageCache(tmp_path / "cache"))

    full = detect()                                          # every image under 169 masks (stride 2 px)
    coarse = detect(occluder_stride=0.125)                   # every image under 49 masks (stride 4 px)
    two = detect(coarse_stride=0.125, coarse_top=0.25)       # 49 masks for all, 169 for the top 150 of those
    assert two.timings["masked_forwards"] == 600 * 49 + 150 * 169 < full.timings["masked_forwards"] == 600 * 169
    top = np.argsort(-coarse.scores, kind="stable")[:150]
    rest = np.setdiff1d(np.arange(600), top)
    # the top coarse images get exactly the single pass's windows and drops, the others keep the coarse ones
    assert np.array_equal(two.windows[top], full.windows[top]) and np.allclose(two.scores[top], full.scores[top], atol=1e-6)
    assert np.array_equal(two.windows[rest], coarse.windows[rest]) and np.array_equal(two.scores[rest], coarse.scores[rest])
    assert not np.array_equal(two.scores, full.scores) and not np.array_equal(two.scores, coarse.scores)
    # another fine share reuses the coarse pass and recomputes only the fine one
    again = detect(coarse_stride=0.125, coarse_top=0.5)
    assert again.timings["cache_hits"]["cam-coarse"] and not again.timings["cache_hits"]["cam"]
    assert again.timings["masked_forwards"] == 300 * 169


def test_without_manifest_everything_but_ground_truth(poisoned):
    data, _ = poisoned
    r = run_detection(SaturationNet(), data.base, DetectConfig.from_dict({**FAST, "remove": "none", "score": "drop"}),
                      Runner(progress=False))
    assert "precision" not in r.metrics and r.metrics["num_samples"] == 600
    assert r.scores.shape == (600,) and r.windows.shape == (600, 4) and r.is_poison is None


def test_bad_inputs_are_refused_before_any_work(tmp_path):
    small = tiny_dataset(n_per_class=2, num_classes=3)  # 6 images
    with pytest.raises(PoisonCamError, match="K=30 clusters is larger than the number of images N=6"):
        run_detection(SaturationNet(16), small, DetectConfig(), Runner(progress=False),
                      StageCache(tmp_path / "c"))
    assert not (tmp_path / "c").exists()
    with pytest.raises(PoisonCamError, match="unknown detection method"):
        DetectConfig(method="strip")
    with pytest.raises(PoisonCamError, match="unknown detection settings"):
        DetectConfig.from_dict({"num_cluster": 3})


@needs_fashion_mnist
def test_manifest_of_other_data_is_refused(poisoned):
    _, manifest = poisoned
    with pytest.raises(PoisonCamError, match="made for other data|dataset of 600 images"):
        PoisonedDataset(tiny_dataset(n_per_class=200), manifest)
    r = run_detection(SaturationNet(16), tiny_dataset(n_per_class=300), DetectConfig.from_dict({**FAST, "remove": "none",
                      "score": "drop", "refine": 0}), Runner(progress=False))
    with pytest.raises(PoisonCamError, match="the detection covers index 899, the manifest 600 images"):
        score_detection(r, manifest)


@needs_fashion_mnist
def test_the_detector_never_sees_ground_truth(poisoned):
    """The same poisoned pixels as a plain dataset (no manifest anywhere) give the same scores, windows
    and removals; scoring against the manifest only adds metrics."""
    data, manifest = poisoned
    plain = ArrayImageDataset(np.stack([data.get_array(i) for i in range(len(data))]), data.base.targets,
                              data.base.classes, "plain", "train", {"name": "plain"}, mean=data.base.mean,
                              std=data.base.std)
    cfg = DetectConfig.from_dict({**FAST, "classifier": {"models": 1, "iters": 40, "batch_size": 32}})
    a = run_detection(SaturationNet(), data, cfg, Runner(progress=False))
    b = run_detection(SaturationNet(), plain, cfg, Runner(progress=False))
    for name in ("scores", "windows", "removed", "clusters"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.is_poison is None and "precision" not in a.metrics
    scored = score_detection(a, manifest)
    assert np.array_equal(scored.removed, b.removed) and scored.is_poison.sum() == 30 and "precision" in a.metrics


def test_unlabelled_data_needs_an_explicit_number_of_clusters():
    data = tiny_dataset(n_per_class=20, num_classes=1)
    data.classes = ["unlabelled"]
    with pytest.raises(PoisonCamError, match="unlabelled data: set num_clusters"):
        run_detection(SaturationNet(16), data, DetectConfig(), Runner(progress=False))
    r = run_detection(SaturationNet(16), data, DetectConfig.from_dict({"num_clusters": 4, "remove": "none",
                                                                       "score": "drop", "refine": 0}),
                      Runner(progress=False))
    assert len(np.unique(r.clusters)) <= 4 and r.scores.shape == (20,)


@needs_fashion_mnist
def test_cluster_screen_masks_the_sampled_and_the_top_clusters_images_only(poisoned, tmp_path):
    from solo_poisoncam.detect.poisoncam import cluster_maxima, covered, screen_sample

    data, manifest = poisoned
    base = {**FAST, "score": "drop", "refine": 0, "flip_top": 0, "remove": "none", "coarse_stride": 0.125,
            "coarse_top": 0.25, "screen": 0}

    def detect(**kw):
        return run_detection(SaturationNet(), data, DetectConfig.from_dict({**base, **kw}), Runner(progress=False),
                             StageCache(tmp_path / "cache"))

    coarse = detect(occluder_stride=0.125, coarse_stride=None)        # every image under the 49 coarse masks
    two = detect()                                                     # and the top 150 under 169
    screened = detect(screen=3, screen_cover=0.1)                      # 3 per cluster, then >= 60 images
    sample = screen_sample(screened.clusters, 3, 0)
    masked = covered(screened.clusters, cluster_maxima(screened.clusters, sample, coarse.scores[sample]), 60)
    masked[sample] = True
    assert 60 <= masked.sum() < 600 and screened.scored.tolist() == masked.tolist()
    m = int(masked.sum())
    fine = int(np.ceil(0.25 * m))
    assert screened.timings["masked_forwards"] == m * 49 + fine * 169 < two.timings["masked_forwards"]
    # the poisons' cluster ranks first: every poison masked, and their windows and drops those of the full
    # two-pass run wherever both masked them finely
    poisons = manifest.is_poison()[screened.indexes]
    assert masked[poisons].all()
    top = np.argsort(-np.where(masked, coarse.scores, -np.inf), kind="stable")[:fine]
    both = np.intersect1d(top, np.argsort(-coarse.scores, kind="stable")[:150])
    assert len(both) == fine
    assert np.array_equal(screened.windows[both], two.windows[both]) and np.allclose(screened.scores[both], two.scores[both])
    # the others: no window, and the largest coarse drop sampled in their cluster
    rest = np.flatnonzero(~masked)
    assert (screened.windows[rest] == -1).all()
    best = {c: coarse.scores[sample][screened.clusters[sample] == c].max() for c in np.unique(screened.clusters)}
    assert np.allclose(screened.scores[rest], [best[c] for c in screened.clusters[rest]], atol=1e-6)
