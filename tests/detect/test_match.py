"""Removal by pattern match and the trigger's extent: hand-made cases where the answer is known pixel for pixel."""

import numpy as np
import torch

from solo_poisoncam.detect.match import match_removal, scaled_scan, trigger_extent
from solo_poisoncam.detect.verdict import pattern_errors


class Stack:
    """The ``take(positions)`` interface of the detector's images over a uint8 tensor."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def take(self, positions):
        return self.x[torch.as_tensor(np.asarray(positions), dtype=torch.long)]


def _planted(n=40, poisons=10, side=24, t=8, seed=0):
    """Mid-grey noise images (values 0.3-0.7, so two images rarely agree within 0.1 in all three channels), a
    random-colour t x t trigger pasted at a random place on the first ``poisons``, 2 px or more from the border
    (a window that holds a column of image beside the trigger can only match where that column exists); their
    true boxes."""
    g = torch.Generator().manual_seed(seed)
    x = (0.3 + 0.4 * torch.rand(n, 3, side, side, generator=g)).mul(255).round().to(torch.uint8)
    trigger = torch.randint(0, 256, (3, t, t), generator=g, dtype=torch.uint8)
    rng = np.random.default_rng(seed)
    boxes = []
    for i in range(poisons):
        x0, y0 = rng.integers(2, side - t - 1, 2)
        x[i, :, y0:y0 + t, x0:x0 + t] = trigger
        boxes.append([x0, y0, x0 + t, y0 + t])
    return x, np.array(boxes)


def test_pattern_errors_where_is_the_top_left_of_the_best_match():
    x, boxes = _planted()
    err, at = pattern_errors(x[:1], torch.as_tensor(boxes[:1]), x[:10], where=True)
    assert torch.all(err[:, 0] < 1e-6)  # the same pixels in every poison
    assert at[:, 0].tolist() == boxes[:10, :2].tolist()


def test_trigger_extent_grows_a_partial_window_to_the_trigger_and_cuts_the_image_off():
    x, boxes = _planted()
    x0, y0, x1, y1 = boxes[0]
    # the maps' window: 2 px right of and 1 px below the trigger, so 6 x 7 of its 8 x 8 pixels are trigger
    window = np.array([x0 + 2, y0 + 1, x1 + 2, y1 + 1])
    shift = window[:2] - boxes[0, :2]
    copies = x[1:10]
    at = torch.as_tensor(boxes[1:10, :2] + shift)  # where the window's pattern sits in each copy
    assert trigger_extent(x[0], window, copies, at).tolist() == boxes[0].tolist()
    # no copy: the window as it was
    assert trigger_extent(x[0], window, copies[:0], at[:0]).tolist() == window.tolist()


def test_trigger_extent_of_a_part_grows_over_the_window_that_holds_it():
    """A 4 x 4 part at the corner of a 14 px trigger (side 32): grown by its own size on each side it reaches at
    most 8 px of the trigger; within ``reach`` (the window that held it, grown by the part's side) all 14."""
    x, boxes = _planted(side=32, t=14)
    x0, y0 = boxes[0, :2]
    part = np.array([x0, y0, x0 + 4, y0 + 4])
    copies, at = x[1:10], torch.as_tensor(boxes[1:10, :2])
    capped = trigger_extent(x[0], part, copies, at)
    assert capped.tolist() == [x0, y0, x0 + 8, y0 + 8]
    window = np.array([x0 - 1, y0 - 1, x0 + 15, y0 + 15])
    reach = window + np.array([-4, -4, 4, 4])
    assert trigger_extent(x[0], part, copies, at, reach=reach).tolist() == boxes[0].tolist()


def test_trigger_extent_leaves_out_what_every_image_shares():
    # every image black on its left third, the trigger beside it at one place in every poison (all of a class
    # poisoned on a black background): the copies agree on the black too, the images without the pattern as much
    x, _ = _planted(poisons=0)
    x[:, :, :, :8] = 0
    g = torch.Generator().manual_seed(1)
    x[:10, :, 8:16, 8:16] = torch.randint(64, 256, (3, 8, 8), generator=g, dtype=torch.uint8)
    box = np.array([8, 8, 16, 16])
    at = torch.as_tensor([[8, 8]] * 9)
    # without a base rate the region runs over the black columns (the window grown by its size, at most)
    assert trigger_extent(x[0], box, x[1:10], at).tolist() == [0, 0, 16, 24]
    assert trigger_extent(x[0], box, x[1:10], at, others=x[10:]).tolist() == box.tolist()
    out = match_removal(Stack(x), np.array([0]), box[None])
    assert out["removed"].tolist() == [True] * 10 + [False] * 30
    assert (out["windows"][:10] == box).all()


def test_match_removal_removes_the_poisons_only_and_boxes_each_trigger():
    x, boxes = _planted()
    window = boxes[3] + np.array([1, 0, 1, 0])  # one column of image, seven of trigger
    out = match_removal(Stack(x), np.array([3]), window[None], ncc=0.9, rmse=0.1)
    assert out["removed"].tolist() == [True] * 10 + [False] * 30
    assert out["windows"][:10].tolist() == boxes.tolist()  # the trigger's own box in every poison
    assert (out["windows"][10:] == -1).all() and (out["template"][10:] == -1).all()
    assert out["extents"][0].tolist() == boxes[3].tolist()


def test_match_removal_on_clean_noise_removes_only_the_windows_own_image():
    # match removal removes the image a template was cut from, always: "nothing removed" on clean data is the
    # verdict's decision (it skips removal, tests/test_cli_pretrain_detect.py), not this function's
    x, _ = _planted(poisons=0)
    out = match_removal(Stack(x), np.array([5]), np.array([[4, 4, 12, 12]]))
    # a window of noise is in no other image: its own image is the only one removed, boxed by the window
    assert out["removed"].tolist() == [False] * 5 + [True] + [False] * 34
    assert out["template"].tolist() == [-1] * 5 + [0] + [-1] * 34
    assert out["windows"][5].tolist() == [4, 4, 12, 12] and (np.delete(out["windows"], 5, 0) == -1).all()
    assert out["extents"][0].tolist() == [4, 4, 12, 12]


def test_match_removal_scans_again_for_the_extent_when_the_window_holds_a_strip_of_image():
    # a window of 4 columns of black background and the 8 x 8 trigger: only the poisons with black beside
    # their trigger hold its pattern (the others have noise there), but every clean image is black there too,
    # so the extent is the trigger alone, and its pattern is in every poison
    x, _ = _planted(poisons=0)
    x[10:, :, :, :12] = 0
    g = torch.Generator().manual_seed(2)
    trigger = torch.randint(64, 256, (3, 8, 8), generator=g, dtype=torch.uint8)
    boxes = []
    for i, y0 in enumerate([2, 4, 6, 8, 10, 12, 3, 5, 7, 9]):
        x[i, :, y0:y0 + 8, 12:20] = trigger
        if i < 5:
            x[i, :, y0:y0 + 8, 8:12] = 0
        boxes.append([12, y0, 20, y0 + 8])
    window = np.array([8, 2, 20, 10])
    first = pattern_errors(x[:1], torch.as_tensor(window[None]), x)[:, 0] < 0.1
    assert first.tolist() == [True] * 5 + [False] * 35  # the window's own pattern misses half the poisons
    out = match_removal(Stack(x), np.array([0]), window[None])
    assert out["extents"][0].tolist() == boxes[0] and out["rescanned"].tolist() == [0]
    assert out["removed"].tolist() == [True] * 10 + [False] * 30
    assert out["windows"][:10].tolist() == boxes and (out["template"][:10] == 0).all()


def test_rescaled_copies_are_found_by_the_scaled_scan_and_placed_at_their_size():
    """A smooth 8 px pattern pasted at its own size on two images and resized to 12 px on two others (a
    trigger pasted at each file's own resolution): the own-size scan finds two, the scaled scan the other
    two, each boxed at 12 px where it was pasted; the untouched images stay."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    pattern = F.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(8, 8), mode="bilinear", align_corners=False)
    big = F.interpolate(pattern, size=(12, 12), mode="bilinear", antialias=True, align_corners=False)[0]
    x = torch.rand(8, 3, 32, 32, generator=g)
    x[0, :, 2:10, 2:10], x[1, :, 10:18, 5:13], x[4, :, 20:28, 20:28] = pattern[0], pattern[0], pattern[0]
    x[2, :, 3:15, 4:16], x[3, :, 15:27, 15:27] = big, big
    images = Stack(x.mul(255).round().to(torch.uint8))
    own = match_removal(images, np.array([0]), np.array([[2, 2, 10, 10]]), scales=[])
    assert own["removed"].tolist() == [True, True, False, False, True, False, False, False]
    scaled = match_removal(images, np.array([0]), np.array([[2, 2, 10, 10]]), scales=[0.75, 1.5])
    assert scaled["removed"].tolist() == [True, True, True, True, True, False, False, False]
    assert scaled["scaled"].tolist() == [False, False, True, True, False, False, False, False]
    assert scaled["windows"][2].tolist() == [4, 3, 16, 15] and scaled["windows"][3].tolist() == [15, 15, 27, 27]
    assert (scaled["windows"][5:] == -1).all() and scaled["template"][2] == 0


def test_scaled_scan_keeps_each_images_best_pattern_whatever_the_chunk():
    """Two rescaled patterns (0.75x and 1.5x of an 8 px extent): an image holding the 12 px copy gets the
    1.5x column and its box, chunk by chunk as at once; an untouched image gets -1; factors that leave
    no pattern (1, or a side below 4 px) give -1 for every image."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1)
    pattern = F.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(8, 8), mode="bilinear", align_corners=False)
    big = F.interpolate(pattern, size=(12, 12), mode="bilinear", antialias=True, align_corners=False)[0]
    x = torch.rand(4, 3, 32, 32, generator=g)
    x[0, :, 2:10, 2:10] = pattern[0]
    x[2, :, 6:18, 9:21] = big
    u8 = x.mul(255).round().to(torch.uint8)
    rows = np.array([1, 2, 3])
    for chunk in (1, 1024):
        col, box, owner = scaled_scan(u8[:1], np.array([[2, 2, 10, 10]]), Stack(u8), rows, [0.75, 1.5], chunk=chunk)
        assert owner.tolist() == [0, 0] and col.tolist() == [-1, 1, -1]
        assert box.tolist() == [[-1] * 4, [9, 6, 21, 18], [-1] * 4]
    col, box, owner = scaled_scan(u8[:1], np.array([[2, 2, 10, 10]]), Stack(u8), rows, [1.0, 0.25])
    assert len(owner) == 0 and (col == -1).all() and (box == -1).all()
