import json
import shutil

import pytest

pytest.importorskip("solo.methods", reason="solo-learn is not importable: see docs/solo-learn.md")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from solo.methods import BYOL  # noqa: E402
from solo_testing import fake_train_loader, gen_base_cfg, gen_trainer, save_solo_checkpoint  # noqa: E402

from solo_poisoncam.checks import PoisonCamError  # noqa: E402
from solo_poisoncam.solo_adapter import register  # noqa: E402
from solo_poisoncam.solo_adapter.cluster_head import ClusterHead  # noqa: E402

NUM_CLASSES, K, N = 4, 3, 16


@pytest.fixture(scope="module")
def threat_checkpoint(tmp_path_factory):
    """A real solo-learn checkpoint: BYOL trained one fast_dev_run step on FakeData, saved in the
    Checkpointer layout (args.json beside it)."""
    register()
    cfg = gen_base_cfg("byol", num_classes=NUM_CLASSES, momentum=True, proj_hidden_dim=32, proj_output_dim=16,
                       pred_hidden_dim=32)
    cfg.name = "byol-test"
    model = BYOL(cfg)
    trainer = gen_trainer(cfg)
    trainer.fit(model, fake_train_loader(cfg, size=8))
    return save_solo_checkpoint(model, trainer, tmp_path_factory.mktemp("trained_models") / "byol" / "0", cfg)


def head_cfg(ckpt, **kwargs):
    kw = {"threat_checkpoint": str(ckpt), "num_clusters": K, "kmeans_iters": 5, **kwargs}
    return gen_base_cfg("cluster_head", num_classes=NUM_CLASSES, **kw)


def test_forward_keys_and_shapes(threat_checkpoint):
    cfg = head_cfg(threat_checkpoint)
    model = ClusterHead(cfg)
    model.add_and_assert_specific_cfg(cfg)
    assert cfg.method_kwargs.temperature == 0.1 and cfg.method_kwargs.relabel
    assert list(cfg.method_kwargs.occlusion_area) == [0.02, 0.25] and cfg.method_kwargs.freeze_backbone
    assert [g["name"] for g in model.learnable_params] == ["classifier", "cluster_head"]  # frozen backbone
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert {"logits", "feats", "z", "cluster_logits"} <= set(out)
    assert out["logits"].shape == (2, NUM_CLASSES) and out["feats"].shape == (2, model.features_dim)
    assert out["z"].shape == (2, model.features_dim) and out["cluster_logits"].shape == (2, K)
    assert torch.allclose(out["z"].norm(dim=1), torch.ones(2), atol=1e-5)
    assert set(model.multicrop_forward(x)) >= {"feats", "z", "cluster_logits"}
    unfrozen = ClusterHead(head_cfg(threat_checkpoint, freeze_backbone=False))
    assert [g["name"] for g in unfrozen.learnable_params] == ["backbone", "classifier", "cluster_head"]


def test_threat_weights_are_loaded(threat_checkpoint):
    model = ClusterHead(head_cfg(threat_checkpoint))
    state = torch.load(threat_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, state[f"backbone.{k}"]), k


def test_occlusion_hides_one_square_per_crop(threat_checkpoint):
    model = ClusterHead(head_cfg(threat_checkpoint, occlusion_p=1.0, occlusion_area=[0.1, 0.2]))
    hidden = (model.occlude(torch.ones(8, 3, 32, 32)) == 0).all(1).float().mean((1, 2))
    assert ((hidden >= 0.08) & (hidden <= 0.22)).all()


def test_fast_dev_run_from_a_real_checkpoint(threat_checkpoint, tmp_path):
    cfg = head_cfg(threat_checkpoint)
    model = ClusterHead(cfg)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainer = gen_trainer(cfg)
    trainer.fit(model, fake_train_loader(cfg, size=N))
    assert bool(model.clustered) and model.pseudo_labels.shape == (N,)
    assert int(model.pseudo_labels.max()) < K
    assert torch.allclose(model.centroids.norm(dim=1), torch.ones(K), atol=1e-5)
    assert "train_cluster_loss" in trainer.callback_metrics
    assert torch.isfinite(trainer.callback_metrics["train_cluster_loss"])
    for k, v in model.backbone.state_dict().items():  # frozen: the threat model's weights and BN statistics
        assert torch.equal(v, before[k]), k

    # solo's main_knn / resume path: the per-index buffers come back from the checkpoint
    ckpt = tmp_path / "cluster_head.ckpt"
    trainer.save_checkpoint(ckpt)
    restored = ClusterHead.load_from_checkpoint(ckpt, strict=False, cfg=head_cfg(threat_checkpoint))
    assert bool(restored.clustered) and torch.equal(restored.pseudo_labels, model.pseudo_labels)
    assert torch.allclose(F.normalize(restored.head.weight, dim=1), F.normalize(model.head.weight, dim=1))


def test_relabel_off_uses_the_stored_pseudo_labels(threat_checkpoint):
    cfg = head_cfg(threat_checkpoint, relabel=False)
    model = ClusterHead(cfg)
    gen_trainer(cfg).fit(model, fake_train_loader(cfg, size=N))
    idx = torch.tensor([3, 0, 7])
    assert torch.equal(model.cluster_labels(idx, torch.randn(3, model.features_dim)), model.pseudo_labels[idx])


def test_missing_or_mismatched_threat_checkpoint(threat_checkpoint, tmp_path):
    with pytest.raises(PoisonCamError, match="needs method_kwargs.threat_checkpoint"):
        ClusterHead(gen_base_cfg("cluster_head", num_classes=NUM_CLASSES))

    lone = tmp_path / "lone" / threat_checkpoint.name
    lone.parent.mkdir()
    shutil.copy(threat_checkpoint, lone)
    with pytest.raises(PoisonCamError, match="no args.json beside checkpoint"):
        ClusterHead(head_cfg(lone))

    other = tmp_path / "r50" / threat_checkpoint.name
    other.parent.mkdir()
    shutil.copy(threat_checkpoint, other)
    args = json.loads((threat_checkpoint.parent / "args.json").read_text())
    args["backbone"]["name"] = "resnet50"
    (other.parent / "args.json").write_text(json.dumps(args))
    with pytest.raises(PoisonCamError, match="holds a 'resnet50' backbone but this run builds 'resnet18'"):
        ClusterHead(head_cfg(other))

    cfg = head_cfg(threat_checkpoint)
    cfg.data.dataset = "custom"  # ImageNet stem here, CIFAR stem in the checkpoint
    with pytest.raises(PoisonCamError, match="CIFAR ResNet stem but this run builds the ImageNet one"):
        ClusterHead(cfg)

    broken = tmp_path / "broken" / threat_checkpoint.name
    broken.parent.mkdir()
    shutil.copy(threat_checkpoint.parent / "args.json", broken.parent / "args.json")
    state = torch.load(threat_checkpoint, map_location="cpu", weights_only=True)
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if not k.startswith("backbone.layer4.")}
    torch.save(state, broken)
    with pytest.raises(PoisonCamError, match=r"does not match the 'resnet18' backbone: \d+ missing"):
        ClusterHead(head_cfg(broken))
