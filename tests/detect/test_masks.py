"""Masks: RISE and occlusion masks, fills, apply_masks / ApplyMasks, activation maps."""

import pytest
import torch

from solo_poisoncam.checks import PoisonCamError
from solo_poisoncam.ops.masks import ApplyMasks, activation_map, apply_masks, fill_values, occlusion_masks, rise_masks


def gen(device, seed=0):
    return torch.Generator(device=device).manual_seed(seed)


# ---------------------------------------------------------------- RISE
def test_rise_shape_range_dtype(device):
    m = rise_masks(10, 12, 9, grid=3, generator=gen(device), device=device)
    assert m.shape == (10, 1, 12, 9) and m.dtype == torch.float32 and m.device.type == device.type
    assert bool(((m >= 0) & (m <= 1)).all())
    m64 = rise_masks(2, 4, 4, generator=gen(device), device=device, dtype=torch.float64)
    assert m64.dtype == torch.float64


@pytest.mark.parametrize("p_keep", [0.2, 0.5, 0.8])
def test_rise_mean_close_to_p_keep(device, p_keep):
    m = rise_masks(2000, 16, 16, grid=4, p_keep=p_keep, generator=gen(device), device=device)
    assert float(m.mean()) == pytest.approx(p_keep, abs=0.02)


def test_rise_extremes(device):
    assert bool((rise_masks(3, 8, 8, p_keep=1.0, device=device) == 1).all())
    assert bool((rise_masks(3, 8, 8, p_keep=0.0, device=device) == 0).all())


def test_rise_deterministic_with_generator(device):
    a = rise_masks(16, 10, 10, generator=gen(device, 7), device=device)
    b = rise_masks(16, 10, 10, generator=gen(device, 7), device=device)
    c = rise_masks(16, 10, 10, generator=gen(device, 8), device=device)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rise_masks_differ_and_are_smooth(device):
    m = rise_masks(32, 16, 16, grid=4, generator=gen(device), device=device)
    flat = m.flatten(1)
    assert len(torch.unique(flat, dim=0)) > 1  # not all identical
    assert bool(((m > 0.01) & (m < 0.99)).any())  # bilinear upsampling gives soft edges


def test_rise_matches_upsample_then_crop():
    """The fused interpolation equals RISE's recipe: upsample the grid to (grid+1)*cell, crop at the shift."""
    grid, h, w, n = 3, 7, 5, 6
    g = torch.Generator().manual_seed(0)
    m = rise_masks(n, h, w, grid=grid, generator=g)
    g = torch.Generator().manual_seed(0)  # replay the same draws: cells, then y shifts, then x shifts
    cells = (torch.rand(n, grid, grid, generator=g) < 0.5).float()
    ch, cw = -(-h // grid), -(-w // grid)
    dy = torch.randint(0, ch, (n, 1), generator=g)[:, 0]
    dx = torch.randint(0, cw, (n, 1), generator=g)[:, 0]
    up = torch.nn.functional.interpolate(cells[:, None], size=((grid + 1) * ch, (grid + 1) * cw),
                                         mode="bilinear", align_corners=False)
    ref = torch.stack([up[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    assert torch.allclose(m, ref, atol=1e-6)


def test_rise_errors():
    with pytest.raises(PoisonCamError, match="p_keep"):
        rise_masks(2, 4, 4, p_keep=1.5)
    with pytest.raises(PoisonCamError, match="num_masks"):
        rise_masks(0, 4, 4)


# ---------------------------------------------------------------- occlusion
def test_occlusion_6x6_size2_stride2(device):
    masks, boxes = occlusion_masks(6, 6, size=2, stride=2, device=device)
    assert masks.shape == (9, 1, 6, 6) and boxes.shape == (9, 4) and boxes.dtype == torch.long
    expected = [[x, y, x + 2, y + 2] for y in (0, 2, 4) for x in (0, 2, 4)]  # row-major
    assert boxes.tolist() == expected
    hidden = (masks == 0).sum(dim=(1, 2, 3))
    assert hidden.tolist() == [4] * 9
    # mask 5 is the box x in [4, 6), y in [2, 4)
    ref = torch.ones(6, 6, device=device)
    ref[2:4, 4:6] = 0
    assert torch.equal(masks[5, 0], ref)
    assert bool((masks.min(0).values == 0).all())  # every pixel is hidden by some mask


def test_occlusion_stride_larger_than_size():
    # starts 0, 4 along each axis; 4 = 6 - 2 is already flush with the border, nothing added
    masks, boxes = occlusion_masks(6, 6, size=2, stride=4)
    assert boxes.tolist() == [[0, 0, 2, 2], [4, 0, 6, 2], [0, 4, 2, 6], [4, 4, 6, 6]]
    assert (masks == 0).sum(dim=(1, 2, 3)).tolist() == [4] * 4


def test_occlusion_last_position_flush():
    # size 3, stride 2 on 6 px: 0, 2, then 3 (flush) instead of 4 (would stick out)
    masks, boxes = occlusion_masks(6, 6, size=3, stride=2)
    assert sorted(set(boxes[:, 0].tolist())) == [0, 2, 3]
    assert len(boxes) == 9 and int(boxes[:, 2:].max()) == 6
    assert (masks == 0).sum(dim=(1, 2, 3)).tolist() == [9] * 9


def test_occlusion_rectangular():
    masks, boxes = occlusion_masks(4, 6, size=(2, 3), stride=(2, 3))
    assert boxes.tolist() == [[0, 0, 3, 2], [3, 0, 6, 2], [0, 2, 3, 4], [3, 2, 6, 4]]
    assert masks.shape == (4, 1, 4, 6)


def test_occlusion_too_large():
    with pytest.raises(PoisonCamError, match="larger than the image"):
        occlusion_masks(4, 4, size=5, stride=1)


# ---------------------------------------------------------------- fills and apply
IMG = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2), mean 2.5
MASKS = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.5, 1.0], [1.0, 0.0]]]])  # (2, 1, 2, 2)


def test_apply_masks_zero_fill(device):
    out = apply_masks(IMG.to(device), MASKS.to(device), fill="zero")
    assert out.shape == (2, 1, 2, 2)
    assert out[0, 0].tolist() == [[1.0, 0.0], [0.0, 4.0]]
    assert out[1, 0].tolist() == [[0.5, 2.0], [3.0, 0.0]]


def test_apply_masks_mean_fill(device):
    out = apply_masks(IMG.to(device), MASKS.to(device), fill="mean")
    assert out[0, 0].tolist() == [[1.0, 2.5], [2.5, 4.0]]
    assert out[1, 0].tolist() == [[1.75, 2.0], [3.0, 2.5]]  # 0.5 * 1 + 0.5 * 2.5
    ds = apply_masks(IMG.to(device), MASKS.to(device), fill="mean", mean=torch.tensor([10.0]))
    assert ds[0, 0].tolist() == [[1.0, 10.0], [10.0, 4.0]]
    const = apply_masks(IMG.to(device), MASKS.to(device), fill=-1.0)
    assert const[0, 0].tolist() == [[1.0, -1.0], [-1.0, 4.0]]


def test_apply_masks_order_and_per_image_masks(device):
    x = torch.rand(3, 2, 5, 5, device=device)
    m = rise_masks(4, 5, 5, generator=gen(device), device=device)
    out = apply_masks(x, m, fill="zero")
    assert out.shape == (12, 2, 5, 5)
    assert torch.allclose(out[2 * 4 + 1], x[2] * m[1])  # image-major
    per_image = torch.rand(3, 4, 1, 5, 5, device=device)
    out = apply_masks(x, per_image, fill="mean")
    base = x.mean(dim=(2, 3), keepdim=True)
    ref = x[1] * per_image[1, 3] + base[1] * (1 - per_image[1, 3])
    assert torch.allclose(out[1 * 4 + 3], ref, atol=1e-6)


def test_apply_masks_blur_and_channel_tensor(device):
    x = torch.rand(2, 3, 16, 16, device=device)
    m, _ = occlusion_masks(16, 16, size=4, stride=4, device=device)
    base = fill_values(x, "blur")
    assert base.shape == x.shape
    out = apply_masks(x, m, fill="blur")
    ref = x[1] * m[5] + base[1] * (1 - m[5])
    assert torch.allclose(out[16 + 5], ref, atol=1e-6)
    c = torch.tensor([0.1, 0.2, 0.3], device=device)
    out = apply_masks(x, m, fill=c)
    hidden = m[0, 0] == 0
    assert torch.allclose(out[0][:, hidden], c[:, None].expand(3, int(hidden.sum())))


def test_fill_values(device):
    x = IMG.to(device)
    assert fill_values(x, "zero").tolist() == [[[[0.0, 0.0], [0.0, 0.0]]]]
    assert fill_values(x, "mean").tolist() == [[[[2.5, 2.5], [2.5, 2.5]]]]
    assert fill_values(x, 7.0).tolist() == [[[[7.0, 7.0], [7.0, 7.0]]]]
    with pytest.raises(PoisonCamError, match="unknown fill"):
        fill_values(x, "noise")
    with pytest.raises(PoisonCamError, match=r"\(C,\)"):
        fill_values(x, torch.tensor([1.0, 2.0]))


def test_apply_masks_shape_errors():
    with pytest.raises(PoisonCamError, match="masks"):
        apply_masks(IMG, torch.ones(2, 1, 3, 3))
    with pytest.raises(PoisonCamError, match="masks"):
        apply_masks(IMG, torch.ones(2, 2, 1, 2, 2))  # per-image masks for B=2, images have B=1


@pytest.mark.parametrize("fill", ["zero", "mean", "blur", 0.3])
def test_module_equals_function(device, fill):
    x = torch.rand(2, 3, 8, 8, device=device)
    m = rise_masks(3, 8, 8, generator=gen(device), device=device)
    module = ApplyMasks(fill=fill).to(device)
    assert torch.equal(module(x, m), apply_masks(x, m, fill=fill))


def test_module_with_dataset_mean(device):
    mean = torch.tensor([0.1, 0.2, 0.3])
    module = ApplyMasks(fill="mean", mean=mean).to(device)
    x = torch.rand(2, 3, 8, 8, device=device)
    m = rise_masks(3, 8, 8, generator=gen(device), device=device)
    assert torch.equal(module(x, m), apply_masks(x, m, fill="mean", mean=mean.to(device)))


def test_apply_masks_differentiable():
    x = torch.rand(1, 1, 4, 4, requires_grad=True)
    m = torch.rand(2, 1, 4, 4, requires_grad=True)
    apply_masks(x, m, fill="mean").sum().backward()
    assert x.grad is not None and m.grad is not None


# ---------------------------------------------------------------- activation map
def test_activation_map_hand_example(device):
    # 1x2 image; mask 0 hides the left pixel, mask 1 hides both
    masks = torch.tensor([[[[0.0, 1.0]]], [[[0.0, 0.0]]]], device=device)  # (2, 1, 1, 2)
    drops = torch.tensor([[1.0, 3.0], [4.0, -2.0]], device=device)  # (B=2, M=2)
    amap = activation_map(drops, masks)
    assert amap.shape == (2, 1, 2)
    assert amap.tolist() == [[[2.0, 3.0]], [[1.0, -2.0]]]  # left: mean of both drops; right: mask 1 only


def test_activation_map_soft_and_unhidden(device):
    masks = torch.tensor([[[[0.5, 1.0]]], [[[1.0, 1.0]]]], device=device)  # the right pixel is never hidden
    amap = activation_map(torch.tensor([[2.0, 8.0]], device=device), masks)
    assert amap.tolist() == [[[2.0, 0.0]]]


def test_activation_map_per_image_masks(device):
    shared = rise_masks(5, 6, 6, generator=gen(device), device=device)
    drops = torch.rand(3, 5, device=device)
    a = activation_map(drops, shared)
    b = activation_map(drops, shared[None].expand(3, -1, -1, -1, -1))
    assert a.shape == (3, 6, 6) and torch.allclose(a, b, atol=1e-6)


def test_activation_map_localises_occluder():
    """Drops that are high only when a fixed 2x2 block is hidden put the map's maximum on that block."""
    masks, boxes = occlusion_masks(6, 6, size=2, stride=2)
    drops = torch.zeros(1, 9)
    drops[0, 4] = 1.0  # box [2, 2, 4, 4]
    amap = activation_map(drops, masks)
    assert bool((amap[0, 2:4, 2:4] == 1).all()) and float(amap.sum()) == 4.0


def test_build_masks_holds_occluders_of_each_side_in_the_list():
    from solo_poisoncam.detect.config import DetectConfig, PoisonCamConfig
    from solo_poisoncam.detect.poisoncam import build_masks

    one = build_masks(PoisonCamConfig(occluder=0.25), 32)  # 8 px at stride 4: 7 x 7 positions
    both = build_masks(PoisonCamConfig(), 32)  # the default, and 16 px at stride 4: 5 x 5
    hidden = (1 - both).flatten(1).sum(1)
    assert one.shape == (49, 1, 32, 32) and both.shape == (49 + 25, 1, 32, 32)
    assert torch.equal(both[:49], one)
    assert (hidden[:49] == 64).all() and (hidden[49:] == 256).all()
    coarse = build_masks(PoisonCamConfig(occluder=[0.25, 0.5]), 32, stride=0.25)  # 4 x 4 and 3 x 3 at stride 8
    assert coarse.shape[0] == 16 + 9
    for bad in ([], [0.25, 0], 1.5, [0.5, "big"]):
        with pytest.raises(PoisonCamError, match="occluder must be a share of the side"):
            PoisonCamConfig(occluder=bad)
    assert DetectConfig.from_dict({"occluder": (0.25, 0.5)}).poisoncam.occluder == [0.25, 0.5]
