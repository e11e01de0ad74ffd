import numpy as np
import pytest
from helpers import SaturationNet, needs_fashion_mnist, poisoned_fashion_mnist, tiny_dataset

from solo_poisoncam import PoisonCamError
from solo_poisoncam.data.base import ArrayImageDataset
from solo_poisoncam.detect.config import DetectConfig
from solo_poisoncam.detect.pipeline import run_detection
from solo_poisoncam.engine.cache import StageCache
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.eval.detection import score_detection
from solo_poisoncam.poison import PoisonedDataset

FAST = {"num_clusters": 10, "occluder_stride": 1 / 16, "flip_images": 40, "flip_top": 60, "remove": "classifier",
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
    # no bars (progress off), still one plain line per stage and per classifier model, on stderr
    err = capsys.readouterr().err.splitlines()
    stages = [line.split(":")[0].split()[-1] for line in err if line.endswith(" s") or "images)" in line]
    assert stages[:3] == ["features", "kmeans", "masking"] and "classifier" in stages
    assert any("poison classifier: model 1/1 trained in" in line for line in err) and "\r" not in "".join(err)
    m = r.metrics
    assert m["num_poisons"] == 30 and m["num_samples"] == 600
    assert m["auroc"] > 0.95 and m["precision_at_20"] >= 0.9
    assert m["trigger_detection_accuracy"] >= 0.9 and m["localisation_all"]["count"] == 30
    assert m["recall"] >= 0.9 and m["precision"] >= 0.5  # the classifier generalises from the top-20 triggers
    assert set(r.timings) >= {"features_s", "kmeans_s", "masking_s", "classifier_s", "masked_forwards_per_s",
                              "masking_overhead", "device"}
    assert r.timings["masked_forwards"] == 600 * 169
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
def test_patchsearch_runs_its_own_clustering_window_and_search(poisoned, tmp_path):
    data, manifest = poisoned
    cfg = DetectConfig.from_dict({**FAST, "method": "patchsearch", "test_images_size": 40})
    assert cfg.window == 60 / 224  # the official fixed window_w, 60 px at 224
    cache = StageCache(tmp_path / "cache")
    r = score_detection(run_detection(SaturationNet(), data, cfg, Runner(progress=False), cache), manifest)
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
