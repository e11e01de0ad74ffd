"""Windows: best window of a map, batched paste and crop."""

import pytest
import torch

from solo_poisoncam.checks import PoisonCamError
from solo_poisoncam.detect.window import crop_boxes, max_sum_window, paste_patches


# ---------------------------------------------------------------- max_sum_window
def test_single_hot_block(device):
    maps = torch.zeros(3, 7, 9, device=device)
    maps[0, 2:4, 5:7] = 1.0
    maps[1, 0:2, 0:2] = 1.0
    maps[2, 5:7, 7:9] = 1.0  # bottom-right corner
    boxes = max_sum_window(maps, 2)
    assert boxes.dtype == torch.long and boxes.shape == (3, 4) and boxes.device.type == device.type
    assert boxes.tolist() == [[5, 2, 7, 4], [0, 0, 2, 2], [7, 5, 9, 7]]


def test_rectangular_window(device):
    maps = torch.zeros(1, 6, 6, device=device)
    maps[0, 1:4, 2:4] = 1.0  # 3 rows x 2 cols
    assert max_sum_window(maps, (3, 2)).tolist() == [[2, 1, 4, 4]]


def test_ties_go_first_in_row_major_order(device):
    maps = torch.zeros(2, 6, 6, device=device)
    maps[0, 4:6, 0:2] = 1.0  # lower left
    maps[0, 1:3, 4:6] = 1.0  # upper right: comes first in row-major order
    boxes = max_sum_window(maps, 2)
    assert boxes[0].tolist() == [4, 1, 6, 3]
    assert boxes[1].tolist() == [0, 0, 2, 2]  # flat map: every window ties, the first one wins


def test_window_as_large_as_map_and_negative_maps(device):
    maps = -torch.rand(2, 4, 5, device=device)
    assert max_sum_window(maps, (4, 5)).tolist() == [[0, 0, 5, 4]] * 2
    maps = -torch.ones(1, 3, 3, device=device)
    maps[0, 2, 2] = 0.0
    assert max_sum_window(maps, 1).tolist() == [[2, 2, 3, 3]]


def test_window_too_large():
    with pytest.raises(PoisonCamError, match="larger than the map"):
        max_sum_window(torch.zeros(1, 4, 4), 5)
    with pytest.raises(PoisonCamError, match="larger than the map"):
        max_sum_window(torch.zeros(1, 4, 4), (2, 6))
    with pytest.raises(PoisonCamError, match="maps"):
        max_sum_window(torch.zeros(4, 4), 2)


def test_window_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 8, 7, generator=g)
    boxes = max_sum_window(maps, (3, 2))
    for b in range(4):
        sums = torch.stack([torch.stack([maps[b, y:y + 3, x:x + 2].sum() for x in range(6)]) for y in range(6)])
        y, x = divmod(int(sums.argmax()), 6)
        assert boxes[b].tolist() == [x, y, x + 2, y + 3]


# ---------------------------------------------------------------- paste / crop
def test_paste_hand_checked(device):
    images = torch.zeros(2, 1, 4, 5, device=device)
    patches = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[5.0, 6.0], [7.0, 8.0]]]], device=device)
    out = paste_patches(images, patches, torch.tensor([[0, 0], [3, 2]], device=device))
    assert out[0, 0].tolist() == [[1, 2, 0, 0, 0], [3, 4, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert out[1, 0].tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 5, 6], [0, 0, 0, 7, 8]]
    assert bool((images == 0).all())  # input untouched


def test_paste_shared_patch_multichannel(device):
    images = torch.rand(3, 3, 6, 6, device=device)
    patch = torch.rand(3, 2, 3, device=device)  # (C, h, w)
    pos = torch.tensor([[0, 4], [3, 0], [1, 2]], device=device)
    out = paste_patches(images, patch, pos)
    for b, (x0, y0) in enumerate(pos.tolist()):
        assert torch.equal(out[b, :, y0:y0 + 2, x0:x0 + 3], patch)
        keep = torch.ones(6, 6, dtype=torch.bool, device=device)
        keep[y0:y0 + 2, x0:x0 + 3] = False
        assert torch.equal(out[b][:, keep], images[b][:, keep])


def test_crop_hand_checked(device):
    x = torch.arange(2 * 16, dtype=torch.float32, device=device).view(2, 1, 4, 4)
    crops = crop_boxes(x, torch.tensor([[1, 0, 3, 2], [2, 1, 4, 3]], device=device))
    assert crops.shape == (2, 1, 2, 2)
    assert crops[0, 0].tolist() == [[1, 2], [5, 6]]
    assert crops[1, 0].tolist() == [[22, 23], [26, 27]]


def test_paste_crop_round_trip(device):
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(5, 3, 10, 12, generator=g, device=device)
    patches = torch.rand(5, 3, 4, 3, generator=g, device=device)
    pos = torch.stack([torch.randint(0, 10, (5,), generator=g, device=device),
                       torch.randint(0, 7, (5,), generator=g, device=device)], dim=1)
    pasted = paste_patches(images, patches, pos)
    boxes = torch.cat([pos, pos + torch.tensor([3, 4], device=device)], dim=1)
    assert torch.equal(crop_boxes(pasted, boxes), patches)
    # pasting a crop back where it came from changes nothing
    assert torch.equal(paste_patches(images, crop_boxes(images, boxes), pos), images)


def test_window_then_crop(device):
    maps = torch.zeros(2, 8, 8, device=device)
    maps[0, 1:4, 2:5] = 1.0
    maps[1, 5:8, 0:3] = 1.0
    images = torch.rand(2, 3, 8, 8, device=device)
    crops = crop_boxes(images, max_sum_window(maps, 3))
    assert torch.equal(crops[0], images[0, :, 1:4, 2:5]) and torch.equal(crops[1], images[1, :, 5:8, 0:3])


def test_paste_differentiable():
    images = torch.rand(2, 1, 4, 4, requires_grad=True)
    patches = torch.rand(2, 1, 2, 2, requires_grad=True)
    paste_patches(images, patches, torch.tensor([[0, 0], [2, 2]])).sum().backward()
    assert float(images.grad.sum()) == 2 * 16 - 2 * 4 and float(patches.grad.sum()) == 8


def test_paste_crop_errors():
    images = torch.zeros(2, 1, 4, 4)
    with pytest.raises(PoisonCamError, match="inside"):
        paste_patches(images, torch.ones(1, 2, 2), torch.tensor([[0, 0], [3, 0]]))
    with pytest.raises(PoisonCamError, match="inside"):
        paste_patches(images, torch.ones(1, 2, 2), torch.tensor([[-1, 0], [0, 0]]))
    with pytest.raises(PoisonCamError, match="larger"):
        paste_patches(images, torch.ones(1, 5, 2), torch.tensor([[0, 0], [0, 0]]))
    with pytest.raises(PoisonCamError, match="same size"):
        crop_boxes(images, torch.tensor([[0, 0, 2, 2], [0, 0, 3, 2]]))
    with pytest.raises(PoisonCamError, match="inside"):
        crop_boxes(images, torch.tensor([[0, 0, 2, 2], [3, 3, 5, 5]]))
    with pytest.raises(PoisonCamError, match="patches"):
        paste_patches(images, torch.ones(2, 2, 2, 2), torch.tensor([[0, 0], [0, 0]]))  # channel mismatch
