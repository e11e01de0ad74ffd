"""Every config under zoo_configs/ composes with Hydra from the groups this repository ships (no
solo-learn needed), with and without the plugin's +poison / +detect groups.

A group that is missing from the repository (as ``wandb/`` once was, kept out by a ``.gitignore``
line) or a key that solo-learn's parser needs fails here, in CI, although solo-learn is absent there.
"""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from solo_poisoncam.detect.config import DetectConfig

ZOO = Path(__file__).resolve().parent.parent / "zoo_configs"
PRETRAIN = sorted((ZOO / "pretrain").glob("*/*.yaml"))
LINEAR = sorted((ZOO / "linear").glob("*/*.yaml"))

# keys solo-learn's parse_cfg reads without a default (solo/args/pretrain.py, solo/args/linear.py)
COMMON_KEYS = ["name", "backbone.name", "data.dataset", "data.train_path", "data.format", "optimizer.name",
               "optimizer.batch_size", "optimizer.lr", "optimizer.weight_decay", "scheduler.name", "max_epochs",
               "devices", "accelerator", "precision", "wandb.enabled", "wandb.project"]
PRETRAIN_KEYS = COMMON_KEYS + ["method", "checkpoint.enabled", "checkpoint.dir"]
LINEAR_KEYS = COMMON_KEYS + ["pretrained_feature_extractor"]


def _compose(path: Path, overrides=()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(path.parent), version_base="1.2"):
        return compose(config_name=path.name, overrides=list(overrides))


def _missing(cfg, keys):
    return [k for k in keys if OmegaConf.select(cfg, k, default="__absent__") == "__absent__"]


def test_the_zoo_is_complete():
    datasets = {"fashion-mnist", "cifar10", "imagenet100"}
    methods = {"simclr", "byol", "mocov2plus", "simsiam", "barlow", "vicreg", "swav", "dino", "cluster_head"}
    for kind, files in (("pretrain", PRETRAIN), ("linear", LINEAR)):
        found = {(p.parent.name, p.stem) for p in files}
        assert found == {(d, m) for d in datasets for m in methods}, kind


@pytest.mark.parametrize("path", PRETRAIN, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_pretrain_config_composes_with_every_group(path):
    cfg = _compose(path)
    assert _missing(cfg, PRETRAIN_KEYS) == []
    assert cfg.wandb.enabled is False  # shipped off: no login prompt on an offline machine
    assert all("crop_size" in a and "num_crops" in a for a in cfg.augmentations)
    assert sum(a.num_crops for a in cfg.augmentations) >= 2  # an SSL method needs two views
    assert cfg.method == {"barlow": "barlow_twins"}.get(path.stem, path.stem)  # solo-learn METHODS keys
    assert "poison" not in cfg and "detect" not in cfg


@pytest.mark.parametrize("path", PRETRAIN[:1] + PRETRAIN[-1:], ids=lambda p: f"{p.parent.name}/{p.stem}")
@pytest.mark.parametrize("poison", ["patch", "blend", "frequency"])
@pytest.mark.parametrize("detect", ["poisoncam", "patchsearch"])
def test_plugin_groups_compose_onto_zoo_configs(path, poison, detect):
    cfg = _compose(path, [f"+poison={poison}", "poison.rate=0.2", f"+detect={detect}"])
    assert cfg.poison.attack.name == poison and cfg.poison.rate == 0.2
    assert cfg.detect.method == detect
    fields = {k: v for k, v in OmegaConf.to_container(cfg.detect).items()
              if k not in ("enabled", "dir", "cache", "device", "progress")}
    assert DetectConfig.from_dict(fields).method == detect  # every key of the group is a DetectConfig field


def test_patch_region_composes_into_the_attack():
    from solo_poisoncam.poison.attacks import TRAIN_REGION, build_attack

    path = ZOO / "pretrain" / "cifar10" / "byol.yaml"
    default = build_attack(OmegaConf.to_container(_compose(path, ["+poison=patch"]).poison.attack))
    assert default.region == TRAIN_REGION and "region" not in default.config()
    wide = _compose(path, ["+poison=patch", "poison.attack.region=[0.1,0.9]", "poison.attack.size=16"])
    attack = build_attack(OmegaConf.to_container(wide.poison.attack))
    assert attack.region == (0.1, 0.9) and attack.config()["region"] == [0.1, 0.9]


@pytest.mark.parametrize("path", LINEAR, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_linear_config_composes(path):
    cfg = _compose(path)
    assert _missing(cfg, LINEAR_KEYS) == []
    assert cfg.wandb.enabled is False


def test_a_missing_group_fails_composition(tmp_path):
    """The check above can fail: a config naming a group file that is not shipped does not compose."""
    src = (ZOO / "pretrain" / "cifar10" / "byol.yaml").read_text()
    (tmp_path / "augmentations").mkdir()
    for f in (ZOO / "pretrain" / "cifar10" / "augmentations").glob("*.yaml"):
        (tmp_path / "augmentations" / f.name).write_text(f.read_text())
    (tmp_path / "byol.yaml").write_text(src)  # no wandb/ group beside it
    with pytest.raises(Exception, match="wandb/private"):
        _compose(tmp_path / "byol.yaml")


RUNS = sorted((ZOO / "run").glob("*.yaml"))


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.stem)
def test_run_configs_load(path, tmp_path):
    from solo_poisoncam import PoisonCamError
    from solo_poisoncam.pipeline.config import load_run_config
    from solo_poisoncam.pipeline.run import PRETRAIN_OPTIONAL

    if "???" in path.read_text():  # a path the user must give
        with pytest.raises(PoisonCamError, match="(?s)Missing mandatory value.*data.root"):
            load_run_config(str(path))
        cfg = load_run_config(str(path), overrides=[f"data.root={tmp_path / 'x.npz'}"])
    else:
        cfg = load_run_config(str(path))
    assert cfg["name"] == path.stem
    extra = set(cfg["pretrain"]) - {"method", "backbone", "epochs", "batch_size", "lr", "wandb", "method_kwargs"}
    assert extra <= set(PRETRAIN_OPTIONAL)


def test_detect_groups_list_every_detect_config_field():
    """So that every DetectConfig field is overridable as plain detect.<field>=... (no '+')."""
    import dataclasses
    import json
    from pathlib import Path

    from omegaconf import OmegaConf

    from solo_poisoncam.detect.config import SECTIONS, DetectConfig
    from solo_poisoncam.solo_adapter.config import DETECT_ADAPTER_KEYS

    import solo_poisoncam

    conf = Path(solo_poisoncam.__file__).parent / "conf" / "detect"
    fields = {f.name for f in dataclasses.fields(DetectConfig)}
    for option in ("poisoncam", "patchsearch"):
        node = OmegaConf.load(conf / f"{option}.yaml")
        assert set(node) == fields | set(DETECT_ADAPTER_KEYS), option
        for section, kind in SECTIONS.items():
            assert set(node[section]) == {f.name for f in dataclasses.fields(kind)}, (option, section)
        assert node.amp == "off"  # a string: YAML 1.1 would read a bare off as false
        d = {k: v for k, v in OmegaConf.to_container(node).items() if k not in DETECT_ADAPTER_KEYS}
        assert DetectConfig.from_dict(d).method == option
        # and every value is the default it documents: the YAML and the dataclass say the same
        as_lists = lambda v: json.loads(json.dumps(v))  # noqa: E731 (tuples and lists alike)
        assert as_lists(DetectConfig.from_dict(d).to_dict()) == as_lists(DetectConfig(method=option).to_dict()), option
