"""The label-free verdict and the removal modes: hand-computed cases, and both directions on generated data."""

from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from helpers import SaturationNet

from solo_poisoncam.data.base import ArrayImageDataset
from solo_poisoncam.detect.config import DetectConfig
from solo_poisoncam.detect.pipeline import run_detection
from solo_poisoncam.detect.removal import paste_at_random
from solo_poisoncam.detect.decision import binomial_tail, decide, describe
from solo_poisoncam.detect.flip import flip_scores
from solo_poisoncam.detect.handoff import VerdictStatistics
from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.verdict import (Pool, block_bound, core_boxes, null_windows, part_boxes, pattern_errors,
                                          repetition, verdict_statistics)
from solo_poisoncam.engine.cache import StageCache
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.eval.detection import score_detection
from solo_poisoncam.poison import PatchAttack, PoisonedDataset, make_manifest

FAST = {"num_clusters": 10, "flip_images": 40, "flip_top": 60, "null_windows": 60}


def statistics(**given) -> VerdictStatistics:
    """Hand-built :class:`VerdictStatistics`: the ``given`` arrays; every other route holds nothing (no exact
    copy by window, core or part, no copy at another place, no image holding another's copy, flip rates 0),
    sized by ``rep`` (C candidates) and ``null_rep`` (R null windows)."""
    c, r = len(given["rep"]), len(given["null_rep"])
    none = {"exact": np.zeros(c, dtype=int), "core_exact": np.zeros(c, dtype=int),
            "exact_pairs": np.zeros((c, c), dtype=bool), "part_exact": np.zeros(c, dtype=int),
            "part_box": np.tile([[0, 0, 4, 4]], (c, 1)), "shift": np.full((c, c), np.nan), "flip": np.zeros(c),
            "null_exact": np.zeros(r, dtype=int), "null_core_exact": np.zeros(r, dtype=int),
            "null_part_exact": np.zeros(r, dtype=int), "null_shift": np.full((c, r), np.nan),
            "null_flip": np.zeros(r), "null_src": np.arange(r), "null_boxes": np.tile([[0, 0, 4, 4]], (r, 1))}
    return VerdictStatistics(**{**none, **given})


class _OneCluster(torch.nn.Module):
    """A cluster head's activation with one cluster: nothing ever moves (in-place flip rates 0)."""

    def logits(self, x):
        return torch.zeros(len(x), 1)


def test_decide_by_hand():
    stats = statistics(rep=np.array([9, 8, 8, 7, 1, 0]), exact=np.array([2, 1, 1, 3, 0, 0]),
                       null_rep=np.array([0, 0, 1, 0]),
                       coh=np.array([0.5, 0.4, 0.3, 0.2, 0.9, 0.1]), null_coh=np.array([0.1, 0.2, 0.25, 0.15]))
    v = decide(stats, min_count=3, quantile=1.0)
    # repeats: >= min_count - 1 = 2 others and above the null's maximum 1: rows 0-3; their median coherence
    # 0.35 beats the null's maximum 0.25; confirmed: those that cohere beyond 0.25 themselves (rows 0-2)
    assert v.repeated == 4 and v.rep_threshold == 2 and v.learned and v.found
    assert v.coherence == pytest.approx(0.35) and v.coherence_threshold == pytest.approx(0.25)
    assert v.confirmed.tolist() == [True, True, True, False, False, False] and v.confirmed_count == 3
    assert not decide(stats, min_count=4, quantile=1.0).found  # 4 repeat, only 3 confirmed
    # a margin of 0.2 puts the bar at 0.45: repeated but not learned, and said so
    v = decide(stats, min_count=3, margin=0.2, quantile=1.0)
    assert v.repeated == 4 and not v.learned and not v.found and not v.confirmed.any()
    assert describe(v).startswith("no backdoor found (4 of 6 candidate windows repeat")
    assert describe(v).endswith("a repeated pattern the model did not learn)")
    # the 50% quantile of the null coherence, linear interpolation: (0.15 + 0.2) / 2 = 0.175
    assert decide(stats, min_count=3, quantile=0.5).coherence_threshold == pytest.approx(0.175)
    # alike but never exact (aligned natural content): row 0 loses its exact copies and no longer repeats
    v = decide(replace(stats, exact=np.array([0, 1, 1, 3, 0, 0])), min_count=3, quantile=1.0)
    assert v.repeated == 3 and v.confirmed.tolist() == [False, True, True, False, False, False]
    assert not v.found  # 2 confirmed < 3


def test_decide_by_hand_with_in_place_flip_rates():
    """Coherence below the null (a trigger learned at one place only), in-place flip rates above it."""
    stats = statistics(rep=np.array([9, 8, 8, 7, 1, 0]), exact=np.array([2, 1, 1, 3, 0, 0]),
                       null_rep=np.array([0, 0, 1, 0]),
                       coh=np.array([0.1, 0.1, 0.1, 0.1, 0.9, 0.1]), null_coh=np.array([0.1, 0.2, 0.25, 0.15]),
                       flip=np.array([0.3, 0.2, 0.05, 0.15, 0.9, 0.0]), null_flip=np.array([0.0, 0.02, 0.1, -0.01]))
    v = decide(stats, min_count=3, quantile=1.0)
    # repeating rows 0-3: median coherence 0.1 < 0.25, median flip (0.2 + 0.15) / 2 = 0.175 > the null's 0.1;
    # confirmed: those whose own flip rate beats 0.1 (rows 0, 1, 3); row 4 flips but does not repeat
    assert v.learned and v.learned_by == ["in-place flip"] and v.found
    assert v.flip == pytest.approx(0.175) and v.flip_threshold == pytest.approx(0.1)
    assert v.confirmed.tolist() == [True, True, False, True, False, False] and v.confirmed_count == 3
    assert "in-place flip rate 0.175 vs 0.100, the 100% quantiles" in describe(v)
    # nothing moved is nothing learned, whatever the null: a threshold never below 0
    v = decide(replace(stats, flip=np.zeros(6), null_flip=np.full(4, -0.2)), min_count=3, quantile=1.0)
    assert v.flip_threshold == 0.0 and not v.learned and not v.found and v.learned_by == []


def test_decide_by_hand_with_core_exact_copies_and_templates():
    """Rows 0-2 are exact by their own window, rows 3-5 only by their core: all six repeat and are
    confirmed; removal's templates are the three exact by their window (at least min_count of them)."""
    stats = statistics(rep=np.array([9, 8, 8, 7, 6, 6, 0]), exact=np.array([2, 1, 1, 0, 0, 0, 0]),
                       core_exact=np.array([2, 1, 1, 4, 3, 2, 0]), null_rep=np.array([0, 0, 1, 0]),
                       coh=np.array([0.5, 0.4, 0.3, 0.6, 0.5, 0.4, 0.1]), null_coh=np.array([0.1, 0.2, 0.25, 0.15]))
    v = decide(stats, min_count=3, quantile=1.0)
    assert v.found and v.repeated == 6 and v.confirmed_count == 6 and v.templates == 3
    assert v.confirmed.tolist() == [True, True, True, False, False, False, False]
    assert not v.template_core.any()
    # with fewer than min_count exact by their window, every confirmed window is a template, and those
    # exact only by their core (rows 3-5) are matched by their core
    v = decide(stats, min_count=4, quantile=1.0)
    assert v.found and v.templates == 6 and v.confirmed.sum() == 6
    assert v.template_core.tolist() == [False, False, False, True, True, True, False]
    # without core copies, rows 3-5 do not repeat
    v = decide(replace(stats, core_exact=np.zeros(7, dtype=int)), min_count=3, quantile=1.0)
    assert v.repeated == 3 and v.confirmed_count == 3


def test_core_boxes_centre_half_the_side():
    boxes = torch.tensor([[5, 8, 20, 23], [0, 0, 16, 16], [3, 3, 6, 6], [0, 0, 2, 2]])
    # sides 15 -> round(7.5) = 8 (offset 3), 16 -> 8, 3 -> 2 (offset 0), 2 -> 1, at least 2
    assert core_boxes(boxes).tolist() == [[8, 11, 16, 19], [4, 4, 12, 12], [3, 3, 5, 5], [0, 0, 2, 2]]


def test_a_window_spilling_into_background_is_exact_by_its_core():
    """A 12 px textured trigger pasted at (10, 10) on 6 noise images; the window found is 2 px left of it:
    the window's copies are alike (the background strip differs) but none exact; its core's copies are."""
    g = torch.Generator().manual_seed(0)
    trigger = torch.randint(30, 226, (3, 12, 12), generator=g, dtype=torch.uint8)
    pool = torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    pool[:, :, 10:22, 10:22] = trigger
    window = torch.tensor([[8, 10, 20, 22]])
    full = repetition(pool[:1], window, pool, 0.5, np.array([0]), (0.1, 0.02))
    core = repetition(pool[:1], core_boxes(window), pool, 0.9, np.array([0]), (0.02,))
    assert full[1, 0] == 0 and core[0] == 5


def test_in_place_flip_rate_counts_moves_into_the_window_cluster():
    """A toy cluster model: cluster 1 when the 8 px block at (8, 8) is bright, else 0. A bright window
    pasted at its own place (8, 8) moves every flip image into cluster 1; the same window from another
    place, or a dark one, moves none; a flip image already in cluster 1 does not count."""
    class Act(torch.nn.Module):
        def logits(self, x):
            bright = (x[:, :, 8:16, 8:16].mean((1, 2, 3)) > 0.5).float()
            return torch.stack([1 - bright, bright], 1)

    flips = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    flips[0, :, 8:16, 8:16] = 255  # already in cluster 1
    src = torch.zeros(3, 3, 32, 32, dtype=torch.uint8)
    src[0, :, 8:16, 8:16] = 255
    src[1, :, 20:28, 20:28] = 255
    boxes = torch.tensor([[8, 8, 16, 16], [20, 20, 28, 28], [0, 0, 8, 8]])
    rates = flip_scores(Act(), src, boxes, torch.tensor([1, 1, 1]), flips, torch.device("cpu"), forward_batch=16,
                        in_place=True)
    assert rates.tolist() == pytest.approx([0.9, 0.0, 0.0])


def test_pattern_errors_separate_exact_copies_from_alike_ones():
    """A textured block pasted as it is in image 1 and with +-0.05 noise in image 2: both correlate
    (NCC > 0.9 and RMSE < 0.1: they repeat), only image 1's copy is exact (RMSE < 0.02)."""
    g = torch.Generator().manual_seed(0)
    block = torch.randint(40, 216, (3, 5, 5), generator=g).float()
    pool = torch.zeros(3, 3, 16, 16)
    pool[0, :, 1:6, 1:6] = block
    pool[1, :, 8:13, 4:9] = block
    noise = (torch.randint(0, 2, (3, 5, 5), generator=g).float() * 2 - 1) * 0.05 * 255
    pool[2, :, 10:15, 10:15] = block + noise
    pool = pool.round().clamp(0, 255).to(torch.uint8)
    err = pattern_errors(pool[:1], torch.tensor([[1, 1, 6, 6]]), pool)[:, 0]
    assert err[0] < 1e-3 and err[1] < 1e-3 and 0.04 < err[2] < 0.06  # float sums: 0 up to rounding
    counts = repetition(pool[:1], torch.tensor([[1, 1, 6, 6]]), pool, 0.9, np.array([0]), (0.1, 0.02))
    assert counts[:, 0].tolist() == [2, 1]


def test_block_bound_never_exceeds_the_exact_error_and_is_exact_on_a_constant_block():
    """The bound against the brute-force smallest squared RMSE over every position; a 4 x 4 pattern of one
    colour (one block of 4): 0 in an image holding it, and on a plain image 0.4 away the exact 0.4^2."""
    g = torch.Generator().manual_seed(1)
    pool = torch.rand(8, 3, 16, 16, generator=g)
    pool[4:] = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4, generator=g), size=16, mode="bilinear")
    raw = torch.cat([pool[:3, :, 2:11, 5:15], torch.rand(2, 3, 9, 10, generator=g)])
    exact = ((pool.unfold(2, 9, 1).unfold(3, 10, 1)[:, None] - raw[None, :, :, None, None]) ** 2).mean((2, 5, 6))
    exact = exact.flatten(2).min(2).values
    for block in (2, 3, 4):
        assert (block_bound(raw, Pool(pool), block) <= exact + 1e-6).all()
    flat = torch.full((1, 3, 16, 16), 0.2)
    flat[0, :, 4:8, 8:12] = 0.6
    colour = torch.full((1, 3, 4, 4), 0.6)
    assert block_bound(colour, Pool(flat), 4)[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert block_bound(colour, Pool(flat[..., :8] * 0 + 0.2), 4)[0, 0].item() == pytest.approx(0.16, abs=1e-6)


def test_searching_below_a_bound_keeps_every_error_under_it_and_nothing_else():
    """``below``: the same errors and places for every pair under it, inf or >= it for the rest."""
    rng = np.random.default_rng(3)
    pool = torch.as_tensor(rng.integers(60, 200, size=(40, 3, 24, 24)), dtype=torch.uint8)
    pattern = torch.as_tensor(rng.integers(0, 256, size=(3, 8, 8)), dtype=torch.uint8)
    for i in range(0, 40, 4):  # 10 copies, every other one slightly noisy
        noise = torch.as_tensor(rng.integers(-10, 11, size=(3, 8, 8))) * (i % 8 == 4)
        pool[i, :, i % 16:i % 16 + 8, 3:11] = (pattern.long() + noise).clamp(0, 255).to(torch.uint8)
    boxes = torch.tensor([[3, 0, 11, 8], [2, 2, 10, 10], [1, 5, 13, 17]])
    full, at = pattern_errors(pool[:3], boxes, pool, where=True)
    cut, at_cut = pattern_errors(pool[:3], boxes, pool, where=True, below=0.1)
    under = full < 0.1
    assert under[:, 0].sum().item() == 10  # the pattern's copies, exact and noisy
    assert torch.equal(cut[under], full[under]) and torch.equal(at_cut[under], at[under])
    assert (cut[~under] >= 0.1).all() and torch.isinf(cut[~under]).float().mean() > 0.9  # nearly all never searched


def test_pattern_matches_find_a_pasted_pattern_anywhere_and_nothing_in_noise():
    rng = np.random.default_rng(0)
    pool = torch.as_tensor(rng.integers(0, 256, size=(6, 3, 16, 16)), dtype=torch.uint8)
    pattern = torch.as_tensor(rng.integers(0, 256, size=(3, 4, 4)), dtype=torch.uint8)
    pool[1, :, 2:6, 9:13] = pattern
    noise = torch.as_tensor(rng.integers(-6, 7, size=(3, 4, 4)))
    pool[4, :, 10:14, 0:4] = (pattern.long() + noise).clamp(0, 255).to(torch.uint8)  # the same, slightly noisy
    pool[5, :, 0:4, 0:4] = pattern // 2 + 60  # the same structure at another contrast: correlates, but no match
    src = pool[1:2].clone()
    err = pattern_errors(src, torch.tensor([[9, 2, 13, 6]]), pool, ncc=0.9)
    assert (err[:, 0] < 0.1).tolist() == [False, True, False, False, True, False]  # the match bound, RMSE < 0.1
    assert err[5, 0] < 1.0  # NCC alone takes it
    assert repetition(src, torch.tensor([[9, 2, 13, 6]]), pool, 0.9, np.array([1])).tolist() == [1]
    flat = torch.full((1, 3, 16, 16), 128, dtype=torch.uint8)
    assert not (pattern_errors(flat, torch.tensor([[0, 0, 4, 4]]), pool) < 0.1).any()  # a flat window matches nothing


def test_null_windows_come_from_the_least_affected_images_with_the_candidates_sides():
    drop = np.arange(100, dtype=float)  # positions 0..49 are the lower half
    cand = np.array([[0, 0, 5, 5], [2, 2, 9, 9]])
    src, boxes = null_windows(drop, cand, 500, side=16, seed=3)
    assert src.max() < 50 and len(set(src.tolist())) > 40
    sides = boxes[:, 2] - boxes[:, 0]
    assert set(sides.tolist()) == {5, 7} and (boxes[:, 3] - boxes[:, 1] == sides).all()
    assert boxes[:, :2].min() >= 0 and boxes[:, 2:].max() <= 16
    again = null_windows(drop, cand, 500, side=16, seed=3)
    assert np.array_equal(again[1], boxes)  # seeded
    # the cluster screen left 60 images unmasked (NaN): the null comes from those, whatever the others' drops
    screened = drop.copy()
    screened[40:] = np.nan
    src, _ = null_windows(screened, cand, 500, side=16, seed=3)
    assert src.min() >= 40 and len(set(src.tolist())) > 50
    # fewer than half unmasked: the lower half by the measured drops (NaN sorts last)
    screened = drop.copy()
    screened[:10] = np.nan
    src, _ = null_windows(screened, cand, 500, side=16, seed=3)
    assert src.min() >= 10 and src.max() < 60  # the 50 lowest measured


def test_paste_at_random_pastes_each_patch_at_its_own_size():
    x = torch.zeros(6, 3, 10, 10)
    patches = [torch.ones(3, 2, 2), torch.full((3, 4, 4), 0.5)]
    out = paste_at_random(x, patches, np.array([0, 1, 0, 1, 1, 0]), np.random.default_rng(0))
    assert [int((o > 0).sum()) for o in out] == [12, 48, 12, 48, 48, 12]
    assert (x == 0).all()  # input untouched


def generated(n: int = 400, side: int = 32, seed: int = 0):
    """Grayscale textures (no colour anywhere), 4 classes by brightness."""
    rng = np.random.default_rng(seed)
    targets = np.arange(n) % 4
    gray = rng.integers(0, 96, size=(n, side, side, 1)) + (targets * 40)[:, None, None, None]
    images = np.repeat(gray, 3, axis=3).astype(np.uint8)
    return ArrayImageDataset(images, targets, [f"c{i}" for i in range(4)], "generated", "train",
                             spec={"name": "generated", "seed": seed})


@pytest.fixture(scope="module")
def planted():
    base = generated()
    manifest = make_manifest(base, PatchAttack(size=8), target=0, rate=0.3)  # 30 poisons among 400
    return base, PoisonedDataset(base, manifest), manifest


@pytest.mark.parametrize("remove", ["probe", "match"])
def test_verdict_finds_a_planted_trigger_and_removal_takes_almost_only_poisons(planted, remove):
    _, data, manifest = planted
    r = score_detection(run_detection(SaturationNet(), data, DetectConfig.from_dict({**FAST, "remove": remove}),
                                      Runner(progress=False)), manifest)
    v = r.metrics["verdict"]
    assert v["found"] and v["repeated"] >= 5 and v["text"].startswith("backdoor found")
    assert r.metrics["recall"] >= 0.9 and r.metrics["precision"] >= 0.9, r.metrics


def test_verdict_says_none_on_clean_data_and_removes_nothing(planted):
    base, _, _ = planted
    r = run_detection(SaturationNet(), base, DetectConfig.from_dict(FAST), Runner(progress=False))
    v = r.metrics["verdict"]
    assert not v["found"] and v["text"].startswith("no backdoor found") and v["removal_skipped"]
    assert r.metrics["num_removed"] == 0 and not r.removed.any()
    # forced, the old behaviour: the classifier-free probe still runs and may remove
    forced = run_detection(SaturationNet(), base, DetectConfig.from_dict({**FAST, "force_remove": True}),
                           Runner(progress=False))
    assert not forced.metrics["verdict"]["found"] and not forced.metrics["verdict"]["removal_skipped"]
    # it removed what the top-scored windows match (each at least its own image), ranked as without force
    assert 1 <= forced.removed.sum() == forced.metrics["num_removed"] < len(base)
    assert np.array_equal(forced.scores, r.scores) and forced.removed[np.argmax(r.scores)]


def test_patchsearch_has_no_verdict_and_refuses_poisoncam_removals():
    with pytest.raises(Exception, match="PatchSearch removes with its classifier"):
        DetectConfig(method="patchsearch", remove="probe")
    assert DetectConfig(method="patchsearch").remove == "classifier"
    assert DetectConfig().remove == "match"


def test_pattern_matches_ignore_flat_regions_of_the_searched_images():
    # a black image with one faint pixel: its flat regions must not "match" a textured window
    rng = np.random.default_rng(1)
    src = torch.as_tensor(rng.integers(0, 256, size=(1, 3, 16, 16)), dtype=torch.uint8)
    pool = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    pool[1, :, 8, 8] = 1
    assert not (pattern_errors(src, torch.tensor([[0, 0, 5, 5]]), pool) < 0.1).any()


def test_a_window_that_is_mostly_background_matches_nothing():
    # an object's corner on black: it would match every image with a black background
    pool = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    pool[:, :, 4:12, 4:12] = 150
    assert not (pattern_errors(pool[:1], torch.tensor([[0, 0, 6, 6]]), pool) < 0.1).any()


def test_decide_by_hand_repeats_by_the_core_exact_copies_alone():
    """Rows 0-3: windows 2-3 px off a trigger, whose own matches are few (rep 1-2 < min_count - 1 = 3) but
    whose cores have 3-5 exact copies; the null's cores have at most 1 (its 100% quantile). They repeat by
    their core, and with in-place flip rates above the null the backdoor is found; a null whose cores
    copy as often (4) takes the route away."""
    stats = statistics(rep=np.array([1, 2, 1, 2, 0, 0]), exact=np.zeros(6, dtype=int),
                       core_exact=np.array([5, 4, 3, 5, 1, 0]), null_rep=np.array([0, 1, 2, 0]),
                       null_core_exact=np.array([0, 1, 0, 0]),
                       coh=np.array([0.1, 0.1, 0.1, 0.1, 0.9, 0.1]), null_coh=np.array([0.1, 0.2, 0.25, 0.15]),
                       flip=np.array([0.3, 0.4, 0.2, 0.05, 0.9, 0.0]), null_flip=np.array([0.0, 0.02, 0.1, -0.01]))
    v = decide(stats, min_count=4, quantile=1.0)
    # repeating by core: core_exact >= 3 and > 1: rows 0-3; median flip (0.2 + 0.3) / 2 = 0.25 > 0.1; confirmed:
    # own flip > 0.1 (rows 0-2): 3 < min_count 4, not found; with min_count 3 the core bar is 2 others: found
    assert v.repeated == 4 and v.repeated_by_core == 4 and v.flip == pytest.approx(0.25)
    assert v.confirmed_count == 3 and not v.found
    v = decide(stats, min_count=3, quantile=1.0)
    assert v.found and v.repeated == 4 and v.confirmed.tolist() == [True, True, True, False, False, False]
    assert "(4 by their core's exact copies)" in describe(v)
    assert not decide(replace(stats, null_core_exact=np.array([0, 4, 0, 0])), min_count=3, quantile=1.0).found


def test_decide_by_hand_confirms_the_exact_copies_of_a_confirmed_window():
    """Rows 0-4 repeat, all copies of one trigger (exact_pairs links 0-1-2 and 3-4 to 0); rows 0-2 beat the
    null's flip rate themselves (0.3, 0.4, 0.2 > 0.1), rows 3-4 do not (0.05, 0.02): their images hold row 0's
    pattern exactly, so they are the same trigger and confirmed too. Row 5 repeats too, with a pattern of
    its own (linked only to row 6, which does not repeat): not confirmed."""
    pairs = np.zeros((7, 7), dtype=bool)
    pairs[[1, 2, 3], 0] = True  # images 1-3 hold window 0's pattern
    pairs[0, 4] = True  # image 0 holds window 4's: linked either way
    pairs[6, 5] = True
    stats = statistics(rep=np.array([4, 4, 4, 4, 4, 4, 0]), exact=np.array([4, 4, 4, 4, 4, 1, 0]),
                       null_rep=np.array([0, 1, 0, 0]),
                       coh=np.full(7, 0.1), null_coh=np.array([0.1, 0.2, 0.25, 0.15]),
                       flip=np.array([0.3, 0.4, 0.2, 0.05, 0.02, 0.0, 0.0]),
                       null_flip=np.array([0.0, 0.02, 0.1, -0.01]))
    # without the pairs (no image holds another's copy): median flip of rows 0-5 (0.05 + 0.2) / 2 = 0.125 > 0.1,
    # learned; 3 confirmed < min_count 5: not found
    before = decide(stats, min_count=5, quantile=1.0)
    assert before.learned and before.confirmed_count == 3 and not before.found
    v = decide(replace(stats, exact_pairs=pairs), min_count=5, quantile=1.0)
    assert v.found and v.confirmed_count == 5
    assert v.confirmed.tolist() == [True, True, True, True, True, False, False]
    # one step, not a chain: rows 3-5 pass themselves (median flip of rows 0-5 0.125 > 0.1); row 0 is linked to
    # rows 3 and 4, so it is confirmed; rows 1-2 are linked only to row 0, which did not pass itself
    v = decide(replace(stats, exact_pairs=pairs, flip=np.array([0.05, 0.05, 0.05, 0.2, 0.2, 0.9, 0.0])),
               min_count=5, quantile=1.0)
    assert v.flip == pytest.approx(0.125) and v.learned
    assert v.confirmed.tolist() == [True, False, False, True, True, True, False] and not v.found


def test_verdict_statistics_link_the_exact_copies_of_a_planted_trigger(planted):
    """On the planted data: every link between two candidates that carry the trigger is found, and a
    link between a poison and a clean candidate never is (pixel-identical copies only)."""
    _, data, manifest = planted
    images = IndexedImages(data, size=32)
    poisons, clean = manifest.indexes[:10], np.flatnonzero(~manifest.is_poison())[:10]
    cand = np.concatenate([poisons, clean])
    boxes = np.concatenate([manifest.boxes[:10], np.tile([[4, 4, 12, 12]], (10, 1))])
    stats = verdict_statistics(lambda x: x.flatten(1)[:, :8], _OneCluster(), images, np.zeros(len(data), dtype=int),
                               np.zeros(len(data)), cand, boxes, clean[:4], count=8, device=torch.device("cpu"))
    pairs = stats.exact_pairs
    assert pairs.shape == (20, 20) and not pairs[np.arange(20), np.arange(20)].any()
    assert pairs[:10, :10].sum() == 90  # each poison holds every other poison's trigger exactly
    assert not pairs[10:, :10].any() and not pairs[:10, 10:].any()


def test_part_boxes_tile_each_window_to_its_far_edge():
    boxes = torch.tensor([[2, 3, 18, 19], [0, 0, 12, 12], [5, 5, 8, 8]])
    parts, owner = part_boxes(boxes)
    # side 16: part ceil(16 / 4) = 4, stride ceil(3 * 4 / 4) = 3, offsets 0, 3, 6, 9, 12: 25 parts;
    # side 12: part max(4, 3) = 4, offsets 0, 3, 6 and the far edge 8: 16; side 3: the window itself
    assert owner.tolist() == [0] * 25 + [1] * 16 + [2]
    assert parts[0].tolist() == [2, 3, 6, 7] and parts[24].tolist() == [14, 15, 18, 19]
    assert parts[25 + 3].tolist() == [8, 0, 12, 4] and parts[-1].tolist() == [5, 5, 8, 8]
    assert ((parts[:, 2:] - parts[:, :2]) == torch.tensor([4] * 41 + [3])[:, None]).all()


def test_binomial_tail_by_hand():
    # P(X >= 5), X ~ B(7, 1/6): (21 * 25 + 7 * 5 + 1) / 6^7 = 561 / 279936
    assert binomial_tail(5, 7, 1 / 6) == pytest.approx(561 / 279936)
    assert binomial_tail(0, 7, 0.3) == 1.0 and binomial_tail(8, 7, 0.3) == 0.0 and binomial_tail(1, 7, 0.0) == 0.0


def test_decide_by_hand_repeats_by_a_part_alone():
    """Rows 0-4: windows twice a small trigger's side, the trigger off their centre: neither the window
    nor its core has an exact copy, a part has 4-5 (in one another: exact_pairs). Row 5's part has 4
    copies too, in images whose own parts do not repeat: chance, not a group. Null: 1 of 10 random
    windows holds a repeating part (a trigger in a random window), a rate of (1 + 1) / (10 + 2) = 1/6;
    5 of 7 candidates, P = 561 / 279936 < 0.01: enriched. A null of 4 in 10 (rate 5/12) is not beaten."""
    pairs = np.zeros((7, 7), dtype=bool)
    pairs[:5, :5] = True
    pairs[np.arange(7), np.arange(7)] = False
    pairs[6, 5] = pairs[5, 5] = True  # the images holding row 5's part: row 6 (no repeating part) and itself
    stats = statistics(rep=np.zeros(7, dtype=int), exact=np.zeros(7, dtype=int), core_exact=np.zeros(7, dtype=int),
                       null_rep=np.zeros(10, dtype=int), null_core_exact=np.zeros(10, dtype=int),
                       part_exact=np.array([5, 4, 4, 4, 4, 4, 0]),
                       null_part_exact=np.array([0, 0, 9, 0, 0, 1, 0, 0, 2, 0]),
                       part_box=np.tile([[1, 1, 5, 5]], (7, 1)), exact_pairs=pairs,
                       coh=np.full(7, 0.1), null_coh=np.full(10, 0.2),
                       flip=np.array([0.3, 0.4, 0.2, 0.3, 0.2, 0.9, 0.0]), null_flip=np.full(10, 0.1))
    v = decide(stats, min_count=5, quantile=0.99)
    assert v.repeated == 5 and v.repeated_by_part == 5 and v.repeated_by_core == 0
    assert v.found and v.confirmed.tolist() == [True] * 5 + [False] * 2
    assert v.template_part.tolist() == [True] * 5 + [False] * 2 and not v.template_core.any()
    assert "(5 by a part's exact copies)" in describe(v)
    crowded = decide(replace(stats, null_part_exact=np.array([9, 0, 9, 0, 9, 1, 0, 9, 2, 0])), min_count=5,
                     quantile=0.99)
    assert crowded.repeated == 0 and not crowded.found
    # no part with an exact copy (and none in the null): nothing repeats
    v = decide(replace(stats, part_exact=np.zeros(7, dtype=int), null_part_exact=np.zeros(10, dtype=int)),
               min_count=5, quantile=0.99)
    assert v.repeated == 0 and not v.found and "part's" not in describe(v)


def test_a_small_trigger_off_the_window_centre_is_exact_by_a_part(planted):
    """The planted 8 px trigger in the far corner of a 16 px window: the core takes background along and has
    no exact copy, the best part lies inside the trigger and has one in every other poison; clean
    windows' parts have none, and no part links a clean candidate to a poison."""
    _, data, manifest = planted
    images = IndexedImages(data, size=32)
    poisons, clean = manifest.indexes[:10], np.flatnonzero(~manifest.is_poison())[:10]
    cand = np.concatenate([poisons, clean])
    trig = manifest.boxes[:10]
    x0 = np.clip(trig[:, :2] - 8, 0, 16)  # the trigger at the window's far edge where the image allows
    boxes = np.concatenate([np.concatenate([x0, x0 + 16], 1), np.tile([[4, 4, 20, 20]], (10, 1))])
    stats = verdict_statistics(lambda x: x.flatten(1)[:, :8], _OneCluster(), images, np.zeros(len(data), dtype=int),
                               np.zeros(len(data)), cand, boxes, clean[:4], count=8, device=torch.device("cpu"))
    off = (trig[:, :2] - x0 == 8).all(1)
    assert off.sum() >= 3  # the case this test is about is there
    assert (stats.core_exact[:10][off] == 0).all()
    assert (stats.part_exact[:10] == 9).all() and (stats.part_exact[10:] == 0).all()
    pb = stats.part_box[:10]
    assert ((pb[:, :2] >= trig[:, :2]) & (pb[:, 2:] <= trig[:, 2:])).all()  # inside the trigger
    assert not stats.exact_pairs[10:, :10].any() and not stats.exact_pairs[:10, 10:].any()


def test_repetition_shifts_by_hand():
    """Window (4, 4)-(12, 12) of image 0 (8 px): pasted at its own place in image 1 (shift 0), 6 px to the
    right in image 2 (6 / 8 = 0.75), 4 px left and 3 px down in image 3 (4 / 8 = 0.5), absent from image 4
    (NaN); image 0 is the window's own (excluded: NaN)."""
    rng = np.random.default_rng(3)
    pattern = torch.as_tensor(rng.integers(0, 256, size=(3, 8, 8), dtype=np.uint8))
    pool = torch.as_tensor(rng.integers(0, 256, size=(5, 3, 24, 24), dtype=np.uint8))
    for i, (x, y) in enumerate([(4, 4), (4, 4), (10, 4), (0, 7)]):
        pool[i, :, y:y + 8, x:x + 8] = pattern
    counts, shift = repetition(pool[:1], torch.tensor([[4, 4, 12, 12]]), pool, 0.9, np.array([0]), shifts=True)
    assert counts.tolist() == [3]
    assert shift[[1, 2, 3], 0].tolist() == [0.0, 0.75, 0.5] and np.isnan(shift[[0, 4], 0]).all()


def _lossy_stats(moved: float):
    """7 candidates, none with an exact copy. Windows 0-4 have alike copies in one another's images, each
    ``moved`` of its side from its own place; window 5 has copies in images 0-4 at 0.1 of its side (aligned
    content); window 6 none. Null: 1 of 10 random windows has 4 copies at other places (rate 2 / 12 = 1/6)."""
    shift = np.full((7, 7), np.nan)
    shift[:5, :5] = moved
    shift[np.arange(5), np.arange(5)] = np.nan
    shift[:5, 5] = 0.1
    null_shift = np.full((7, 10), np.nan)
    null_shift[:4, 2] = 0.7
    return statistics(rep=np.array([4, 4, 4, 4, 4, 5, 0]), exact=np.zeros(7, dtype=int),
                      core_exact=np.zeros(7, dtype=int),
                      null_rep=np.zeros(10, dtype=int), null_core_exact=np.zeros(10, dtype=int),
                      part_exact=np.zeros(7, dtype=int), null_part_exact=np.zeros(10, dtype=int),
                      part_box=np.tile([[1, 1, 5, 5]], (7, 1)), exact_pairs=np.zeros((7, 7), dtype=bool),
                      shift=shift, null_shift=null_shift,
                      coh=np.full(7, 0.1), null_coh=np.full(10, 0.2),
                      flip=np.array([0.3, 0.4, 0.2, 0.3, 0.2, 0.9, 0.0]), null_flip=np.full(10, 0.1))


def test_decide_by_hand_repeats_by_lossy_copies_at_other_places():
    """No exact copy anywhere (JPEG-saved poisons): windows 0-4 repeat by their 4 copies half their side away,
    5 of 7 candidates against the null's rate 1/6 (P = 561 / 279936 < 0.01, as for parts); their median
    in-place flip rate 0.3 beats the null's 0.1 and each beats it itself: found, the 5 windows are matched
    whole (no core, no part). Window 5's copies sit where it sits (0.1 of the side): not counted."""
    v = decide(_lossy_stats(0.5), min_count=5, quantile=0.99)
    assert v.repeated == 5 and v.repeated_by_shift == 5 and v.found
    assert v.confirmed.tolist() == [True] * 5 + [False] * 2
    assert not v.template_core.any() and not v.template_part.any()
    assert "5 by copies more than 0.25 of their side away" in describe(v)
    # aligned: the same copies within a quarter of the side (the gap between centred trousers' legs)
    aligned = decide(_lossy_stats(0.2), min_count=5, quantile=0.99)
    assert aligned.repeated == 0 and not aligned.found
    assert not decide(_lossy_stats(0.5), min_count=5, quantile=0.99, shift=0.5).found  # strictly more than
    crowded = _lossy_stats(0.5)
    crowded.null_shift[:4, [0, 4, 7, 9]] = 0.6  # 5 of 10 null windows: rate 6 / 12, not beaten
    assert not decide(crowded, min_count=5, quantile=0.99).found
    # no copy at another place (and none in the null): nothing repeats
    v = decide(replace(_lossy_stats(0.5), shift=np.full((7, 7), np.nan), null_shift=np.full((7, 10), np.nan)),
               min_count=5, quantile=0.99)
    assert v.repeated == 0 and not v.found


def test_lossy_copies_count_only_without_enough_exact_ones():
    """Where min_count windows repeat exactly, they are the evidence and the templates: lossy copies add nothing."""
    stats = _lossy_stats(0.5)
    stats = replace(stats, exact=np.array([0, 0, 0, 0, 0, 1, 0]), rep=np.array([4, 4, 4, 4, 4, 5, 0]))
    v = decide(stats, min_count=2, quantile=0.99)  # window 5 alone repeats exactly: 1 < 2, the lossy route counts
    assert v.repeated_by_shift == 5
    stats = replace(stats, exact=np.array([1, 1, 1, 1, 1, 0, 0]))
    v = decide(stats, min_count=5, quantile=0.99)
    assert v.repeated == 5 and v.repeated_by_shift == 0 and v.found


def _noisy_copies(places: str, n: int = 400, side: int = 32, size: int = 8, seed: int = 1):
    """Smooth grayscale images (4 classes by brightness); one colour pattern pasted on 30 images of class 0
    with its own pixel noise on each copy (sd 8 grey levels: alike, never exact, as JPEG-saved poisons),
    at random places or at one place with the +-1 px jitter of aligned content. Returns the data and the
    poisons' positions."""
    rng = np.random.default_rng(seed)
    targets = np.arange(n) % 4
    grid = torch.as_tensor(rng.random((n, 1, 4, 4)), dtype=torch.float32)
    smooth = torch.nn.functional.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)
    gray = (smooth[:, 0].numpy() * 96 + (targets * 40)[:, None, None]).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=3)
    pattern = rng.integers(0, 256, size=(size, size, 3)).astype(np.float64)
    pos = np.flatnonzero(targets == 0)[:30]
    for i in pos:
        x, y = 12 + rng.integers(-1, 2, size=2) if places == "one" else rng.integers(2, side - size - 2, size=2)
        images[i, y:y + size, x:x + size] = np.clip(pattern + rng.normal(0, 8, pattern.shape), 0, 255).round()
    return ArrayImageDataset(images, targets, [f"c{i}" for i in range(4)], "noisy-copies", "train",
                             spec={"name": "noisy-copies", "places": places, "seed": seed}), pos


@pytest.mark.parametrize("places, shift, found", [("random", 0.25, True), ("one", 0.25, False), ("one", 0.0, True)])
def test_alike_copies_count_at_other_places_only(places, shift, found):
    """No exact copy: a pattern pasted at random places is found by its copies at other places; the same
    copies at one place (aligned content) are not, unless verdict_shift lets a 1 px offset count."""
    data, _ = _noisy_copies(places)
    r = run_detection(SaturationNet(), data, DetectConfig.from_dict({**FAST, "remove": "none", "verdict_shift": shift}),
                      Runner(progress=False))
    v = r.metrics["verdict"]
    assert v["found"] == found, v["text"]
    assert (v["repeated_by_shift"] >= 20) == found and v["repeated_by_part"] == 0


def test_verdict_statistics_require_every_route():
    """Every route's arrays are required: statistics of earlier versions, which lacked some of them, are never
    read (the verdict stage's cache key hashes its code), so leaving one out is an error, not a rule without
    that route (which ``decide`` had for them)."""
    full = {f.name: getattr(_lossy_stats(0.5), f.name) for f in fields(VerdictStatistics)}
    for name in ("core_exact", "null_core_exact", "part_exact", "null_part_exact", "part_box", "exact_pairs",
                 "shift", "null_shift", "flip", "null_flip"):
        with pytest.raises(TypeError, match=f"'{name}'"):
            VerdictStatistics(**{k: x for k, x in full.items() if k != name})


def test_verdict_statistics_round_trip_through_the_stage_cache(tmp_path):
    """The verdict stage caches a VerdictStatistics (torch.save, pickled): it loads as one, every array equal
    (NaN shifts included), and decides alike."""
    stats = _lossy_stats(0.5)
    key = {"verdict": {"v": "test"}}
    assert StageCache(tmp_path).get_or_compute("verdict", key, lambda: stats) is stats
    cache = StageCache(tmp_path)
    loaded = cache.get_or_compute("verdict", key, lambda: pytest.fail("not read from the cache"))
    assert cache.hits["verdict"] and type(loaded) is VerdictStatistics and loaded is not stats
    for f in fields(VerdictStatistics):
        np.testing.assert_array_equal(getattr(loaded, f.name), getattr(stats, f.name))
    assert decide(loaded, min_count=5, quantile=0.99).summary() == decide(stats, min_count=5, quantile=0.99).summary()


def test_decision_summary_holds_the_reported_numbers_in_metrics_order():
    v = decide(_lossy_stats(0.5), min_count=5, quantile=0.99)
    assert list(v.summary()) == ["found", "repeated", "repeated_by_core", "repeated_by_part", "repeated_by_shift",
                                 "shift_threshold", "confirmed_count", "templates", "learned", "learned_by",
                                 "min_count", "rep_threshold", "coherence", "coherence_threshold", "quantile",
                                 "null_windows", "candidates", "flip", "flip_threshold"]
    assert v.summary()["repeated_by_shift"] == 5 and v.summary()["learned_by"] == ["in-place flip"]
