import warnings

import pytest

pytest.importorskip("solo.methods", reason="solo-learn is not importable: see docs/solo-learn.md")

import solo.args.pretrain as solo_args  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from solo_testing import image_folder, raw_cfg  # noqa: E402

from solo_poisoncam.checks import PoisonCamError  # noqa: E402
from solo_poisoncam.solo_adapter import register  # noqa: E402
from solo_poisoncam.solo_adapter.config import detect_config  # noqa: E402


@pytest.fixture(autouse=True)
def _registered():
    register()


def parse(cfg):
    return solo_args.parse_cfg(cfg)


def test_no_poison_node_leaves_solo_config_alone():
    cfg = parse(raw_cfg())
    assert "poison" not in cfg and "detect" not in cfg
    assert cfg.data.num_classes == 10 and cfg.data.num_large_crops == 2  # solo's own parse ran


def test_poison_defaults_and_detect_fields_are_filled():
    cfg = parse(raw_cfg(poison={"rate": 0.1}, detect={"method": "poisoncam", "num_clusters": 20}))
    p = cfg.poison
    assert p.enabled and p.attack.name == "patch" and p.target == 0 and p.rate == 0.1
    assert p.rate_of == "target" and p.targeted and p.seed == 0 and p.manifest is None
    assert cfg.detect.enabled and cfg.detect.dir is None and cfg.detect.cache
    d = detect_config(cfg)
    assert d.num_clusters == 20 and d.poisoncam.masks == "occlusion"
    assert cfg.detect.poisoncam.flip_images == d.poisoncam.flip_images  # resolved defaults land in args.json
    assert OmegaConf.to_container(cfg)  # serialisable, as solo's Checkpointer needs


@pytest.mark.parametrize("poison, message", [
    ({"rate": 0.0}, r"poison.rate must be in \(0, 1\]"),
    ({"rate": 1.5}, r"poison.rate must be in \(0, 1\]"),
    ({"attack": {"name": "badnets"}}, "unknown attack 'badnets'; choose one of: blend, frequency, patch"),
    ({"attack": {"name": "patch", "sise": 3}}, "bad arguments for attack 'patch'"),
    ({"target": 10}, r"poison.target=10 does not exist: data.num_classes is 10 \(classes 0..9\)"),
    ({"target": -1}, "poison.target=-1 does not exist"),
    ({"rate_of": "class"}, "poison.rate_of must be 'target'"),
    ({"targeted": False}, "untargeted poisoning takes poison.rate_of=all"),
])
def test_bad_poison_settings_name_the_key(poison, message):
    with pytest.raises(PoisonCamError, match=message):
        parse(raw_cfg(poison=poison))


def test_disabled_poison_is_not_checked():
    cfg = parse(raw_cfg(poison={"enabled": False, "rate": 7}))
    assert not cfg.poison.enabled


def test_dali_is_refused_when_poisoning():
    cfg = raw_cfg(dataset="imagenet100", train_path="/nonexistent", poison={"rate": 0.1})
    cfg.data.format = "dali"
    with pytest.raises(PoisonCamError, match="data.format=dali: DALI reads and decodes the files itself"):
        parse(cfg)


def test_unlabelled_data_allows_only_untargeted_poisoning(tmp_path):
    image_folder(tmp_path / "flat", num_classes=2, per_class=3, labelled=False)
    cfg = raw_cfg(dataset="custom", train_path=tmp_path / "flat", poison={"rate": 0.2})
    cfg.data.no_labels = True
    with pytest.raises(PoisonCamError, match=r"unlabelled data supports only untargeted poisoning \(rate_of=all\)"):
        parse(cfg)
    cfg = raw_cfg(dataset="custom", train_path=tmp_path / "flat",
                  poison={"rate": 0.2, "targeted": False, "rate_of": "all"})
    cfg.data.no_labels = True
    assert parse(cfg).poison.rate_of == "all"


def test_auto_resume_warns_that_it_ignores_poison_settings():
    cfg = raw_cfg(poison={"rate": 0.1})
    cfg.auto_resume.enabled = True
    with pytest.warns(UserWarning, match="AutoResumer .* not on poison"):
        parse(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        parse(raw_cfg(poison={"rate": 0.1}))


@pytest.mark.parametrize("detect, message", [
    ({"method": "gradcam"}, "unknown detection method 'gradcam'"),
    ({"masks": "grid"}, "masks must be occlusion, rise or both"),
    ({"num_masks_typo": 3}, r"unknown detection settings \['num_masks_typo'\]"),
])
def test_bad_detect_settings(detect, message):
    with pytest.raises(PoisonCamError, match=message):
        parse(raw_cfg(detect=detect))


def test_patchsearch_needs_a_gradcam_layer():
    cfg = raw_cfg(detect={"method": "patchsearch"})
    cfg.backbone.name = "vit_tiny"
    with pytest.raises(PoisonCamError, match="needs a Grad-CAM layer"):
        parse(cfg)
