import math

import pytest
import torch
import torch.nn.functional as F

from solo_poisoncam.losses import byol_loss_func, cluster_head_loss_func, simclr_loss_func, simsiam_loss_func
from solo_poisoncam.models import CosineClusterHead, create_backbone
from solo_poisoncam.ssl import SSL_METHODS
from solo_poisoncam.ssl.augment import SSLAugment, color_jitter, random_grayscale, random_resized_crop


def test_simclr_loss_analytic_cases():
    # 2 images x 2 views, all projections identical: every row sees 3 equal logits, 1 positive
    z = torch.ones(4, 8)
    idx = torch.tensor([0, 1, 0, 1])
    assert simclr_loss_func(z, idx, temperature=0.5).item() == pytest.approx(math.log(3), abs=1e-6)
    # orthogonal images with identical views: the positive wins by exp(1/T)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    assert simclr_loss_func(z, idx, temperature=t).item() == pytest.approx(expected, abs=1e-6)


def test_byol_and_simsiam_losses_and_stop_gradient():
    p = torch.tensor([[1.0, 0.0]], requires_grad=True)
    z = torch.tensor([[0.0, 1.0]], requires_grad=True)
    assert byol_loss_func(p, z).item() == pytest.approx(2.0)  # orthogonal: 2 - 2 cos = 2
    assert byol_loss_func(p, p.detach() * 3).item() == pytest.approx(0.0, abs=1e-6)
    loss = simsiam_loss_func(p, z)
    loss.backward()
    assert loss.item() == pytest.approx(0.0) and z.grad is None and p.grad is not None  # stop-gradient on z


def test_cluster_head_loss_ignores_unlabelled():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    full = cluster_head_loss_func(logits, torch.tensor([0, -1]))
    assert full.item() == pytest.approx(F.cross_entropy(logits[:1], torch.tensor([0])).item())


def test_simclr_loss_drops_under_sgd():
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    lin = torch.nn.Linear(8, 4)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    idx = torch.arange(8).repeat(2)
    first = None
    for _ in range(30):
        loss = simclr_loss_func(lin(torch.cat([x[:8], x[:8] + 0.05 * torch.randn(8, 8)])), idx)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.3


def test_crop_identity_flip_and_jitter_noop():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g)
    assert torch.allclose(random_resized_crop(x, 16, (1, 1), (1, 1), flip_p=0.0), x, atol=1e-5)
    assert torch.allclose(random_resized_crop(x, 16, (1, 1), (1, 1), flip_p=1.0), x.flip(-1), atol=1e-5)
    assert torch.allclose(color_jitter(x, 0, 0, 0, 0), x, atol=1e-6)
    gray = random_grayscale(x, p=1.0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    assert torch.equal(random_grayscale(x, p=0.0), x)


def test_augment_views_differ_and_are_seeded():
    aug = SSLAugment(16, (0.5,) * 3, (0.25,) * 3)
    x = (torch.rand(8, 3, 16, 16) * 255).byte()
    a = aug(x, generator=torch.Generator().manual_seed(1))
    b = aug(x, generator=torch.Generator().manual_seed(1))
    c = aug(x, generator=torch.Generator().manual_seed(2))
    assert a.shape == (8, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("method", ["simclr", "byol", "simsiam"])
def test_methods_build_and_step(method):
    cls = SSL_METHODS.get(method)
    cfg = {"method": method, "backbone": {"name": "cnn_small"}, "method_kwargs": dict(cls.DEFAULTS),
           "optimizer": {"lr": 1e-3, "weight_decay": 0.0}, "augment": {"crop_scale": [0.2, 1.0], "grayscale_p": 0.2,
                                                                        "blur_p": 0.0},
           "data": {"image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}}
    model = cls(cfg)
    x = (torch.rand(6, 3, 16, 16) * 255).byte()
    loss = model.ssl_loss([model.augment(x), model.augment(x)], torch.arange(6))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.backbone.features[0].weight.grad is not None
    assert model.forward(torch.rand(2, 3, 16, 16))["feats"].shape == (2, model.backbone.num_features)


def test_backbones_and_cluster_head():
    assert create_backbone("cnn_small")(torch.rand(2, 3, 32, 32)).shape == (2, 128)
    r = create_backbone("resnet18", cifar_stem=True)
    assert r.num_features == 512 and r(torch.rand(1, 3, 32, 32)).shape == (1, 512)
    head = CosineClusterHead(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), temperature=0.5)
    logits = head(torch.tensor([[3.0, 0.0]]))
    assert torch.allclose(logits, torch.tensor([[2.0, 0.0]]))  # cosines (1, 0) / 0.5
