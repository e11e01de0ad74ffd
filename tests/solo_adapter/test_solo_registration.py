import subprocess
import sys

import pytest

pytest.importorskip("solo.methods", reason="solo-learn is not importable: see docs/solo-learn.md")

import solo.args.pretrain as solo_args  # noqa: E402
import solo.data.pretrain_dataloader as solo_data  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from solo.methods import METHODS  # noqa: E402
from solo.methods.base import BaseMethod  # noqa: E402

import solo_poisoncam  # noqa: E402
from solo_poisoncam.checks import PoisonCamError  # noqa: E402
from solo_poisoncam.solo_adapter import is_registered, register  # noqa: E402
from solo_poisoncam.solo_adapter.registration import WRAPPED, import_solo  # noqa: E402


def test_register_is_idempotent():
    solo_poisoncam.register()
    parse_cfg, prepare_datasets = solo_args.parse_cfg, solo_data.prepare_datasets
    configure_callbacks = BaseMethod.configure_callbacks
    register()
    register()
    assert is_registered()
    assert solo_args.parse_cfg is parse_cfg and solo_data.prepare_datasets is prepare_datasets
    assert BaseMethod.configure_callbacks is configure_callbacks
    # one layer of wrapping around solo's own functions, never two
    assert getattr(getattr(parse_cfg, WRAPPED), WRAPPED, None) is None
    assert getattr(parse_cfg, WRAPPED).__module__ == "solo.args.pretrain"
    assert getattr(prepare_datasets, WRAPPED).__module__ == "solo.data.pretrain_dataloader"

    from solo_poisoncam.solo_adapter.cluster_head import ClusterHead

    assert METHODS["cluster_head"] is ClusterHead
    assert issubclass(ClusterHead, BaseMethod)
    assert {"simclr", "byol", "barlow_twins", "swav", "dino"} <= set(METHODS)  # solo's own untouched


def test_register_rebinds_main_globals_once():
    """Option B: main_pretrain.py imported the originals before Hydra started."""
    register()
    originals = {"parse_cfg": getattr(solo_args.parse_cfg, WRAPPED),
                 "prepare_datasets": getattr(solo_data.prepare_datasets, WRAPPED),
                 "METHODS": METHODS, "other": len}
    main_globals = dict(originals)
    register(main_globals=main_globals)
    assert main_globals["parse_cfg"] is solo_args.parse_cfg
    assert main_globals["prepare_datasets"] is solo_data.prepare_datasets
    assert main_globals["METHODS"] is METHODS and main_globals["other"] is len
    register(main_globals=main_globals)  # no double wrapping
    assert main_globals["parse_cfg"] is solo_args.parse_cfg


def test_missing_solo_raises_install_help(monkeypatch):
    monkeypatch.setitem(sys.modules, "solo", None)
    with pytest.raises(PoisonCamError, match="github.com/vturrisi/solo-learn") as e:
        import_solo()
    assert "setuptools<81" in str(e.value)


def test_importing_our_package_never_imports_solo():
    code = ("import sys, solo_poisoncam, solo_poisoncam.solo_adapter; "
            "import solo_poisoncam.solo_adapter.config, solo_poisoncam.solo_adapter.dataset; "
            "print(sorted(m for m in sys.modules if m == 'solo' or m.startswith('solo.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"


def test_hydra_plugin_adds_our_config_groups(tmp_path):
    """The SearchPathPlugin (hydra_plugins/solo_poisoncam) exposes pkg://solo_poisoncam.conf; the primary
    config here does not name that search path itself."""
    (tmp_path / "run.yaml").write_text("name: test\nmethod: simclr\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.2"):
        cfg = compose("run", overrides=["+poison=patch", "poison.rate=0.25", "+detect=poisoncam",
                                        "+method_kwargs=cluster_head", "method_kwargs.num_clusters=7"])
    assert cfg.poison.enabled and cfg.poison.rate == 0.25 and cfg.poison.attack.name == "patch"
    assert cfg.detect.method == "poisoncam" and cfg.detect.enabled
    assert cfg.method_kwargs.num_clusters == 7 and cfg.method_kwargs.relabel
    for group, option in (("poison", "blend"), ("poison", "frequency"), ("detect", "patchsearch")):
        with initialize_config_dir(config_dir=str(tmp_path), version_base="1.2"):
            assert compose("run", overrides=[f"+{group}={option}"])[group].enabled


def test_option_b_guard_is_inert_elsewhere():
    code = ("import sys, hydra_plugins.solo_poisoncam.solo_main, hydra_plugins.solo_poisoncam as p; "
            "print('solo' in sys.modules, p.SoloPoisonCamSearchPathPlugin.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.split() == ["False", "SoloPoisonCamSearchPathPlugin"]


def test_linear_custom_pipeline_follows_data_image_size():
    """main_linear on 32 px custom data: solo's pipeline is 224 px with ImageNet statistics; with
    data.image_size (our zoo linear configs) prepare_transforms gives 32 px, the data's mean/std."""
    import numpy as np
    import solo.args.linear as solo_linear_args
    import solo.data.classification_dataloader as cls_data
    from omegaconf import OmegaConf
    from PIL import Image

    from solo_poisoncam.solo_adapter.registration import STATE

    register()
    assert getattr(solo_linear_args.parse_cfg, WRAPPED).__module__ == "solo.args.linear"
    img = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    STATE.linear_cfg = None
    _, t_val = cls_data.prepare_transforms("custom")
    assert t_val(img).shape == (3, 224, 224)  # solo's own, untouched without data.image_size
    STATE.linear_cfg = OmegaConf.create({"data": {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}})
    try:
        t_train, t_val = cls_data.prepare_transforms("custom")
        x = t_val(img)
        assert x.shape == (3, 32, 32) and abs(float(x.mean()) - (128 / 255 - 0.5) / 0.25) < 1e-5
        assert t_train(img).shape == (3, 32, 32)
    finally:
        STATE.linear_cfg = None


def test_cpu_backbones_are_offered_to_solo_methods():
    import torch
    from solo_testing import gen_base_cfg

    register()
    register()  # idempotent
    assert {"cnn_small", "cnn"} <= set(BaseMethod._BACKBONES)
    cfg = gen_base_cfg("byol", batch_size=4, momentum=True, proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32)
    cfg.backbone.name = "cnn_small"
    cfg.backbone.kwargs = {}
    model = METHODS["byol"](cfg)
    assert model.features_dim == 128 and model.backbone.num_features == 128
    out = model.backbone(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 128)
    # the checkpoint's keys are what our loader expects of cnn_small
    from solo_poisoncam.models.backbones import create_backbone

    assert set(create_backbone("cnn_small").state_dict()) == set(model.backbone.state_dict())
