import re

import numpy as np
import pytest
from PIL import Image

from solo_poisoncam import PoisonCamError
from solo_poisoncam.poison import (BlendAttack, FrequencyAttack, PatchAttack, build_attack, build_trigger,
                                   htba_trigger, trigger_spec)
from solo_poisoncam.poison.attacks import dct_matrix, rgb_to_ycbcr, ycbcr_to_rgb


def test_htba_is_deterministic_colourful_and_seed_dependent():
    a, b, c = htba_trigger(seed=10), htba_trigger(seed=10), htba_trigger(seed=11)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert (a == b).all() and not (a == c).all()
    # saturated colours: most pixels have a channel near 0 or 255, and several distinct colours
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 20
    assert (a.std(axis=-1) > 30).mean() > 0.3  # not grey


def test_png_trigger_roundtrip_and_errors(tmp_path):
    arr = np.zeros((5, 7, 3), np.uint8)
    arr[:, :, 0] = 200
    Image.fromarray(arr).save(tmp_path / "t.png")
    spec = trigger_spec("png", path=str(tmp_path / "t.png"))
    assert (build_trigger(spec) == arr).all()
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(PoisonCamError, match="cannot read trigger file"):
        trigger_spec("png", path=str(tmp_path / "bad.png"))
    with pytest.raises(PoisonCamError, match="does not exist"):
        trigger_spec("png", path=str(tmp_path / "missing.png"))
    Image.fromarray(arr + 1).save(tmp_path / "t.png")  # file changed after the spec was made
    with pytest.raises(PoisonCamError, match="changed since the manifest"):
        build_trigger(spec)


def test_patch_pastes_exactly_inside_the_box():
    trig = np.zeros((2, 2, 3), np.uint8)
    trig[0, 0] = [255, 0, 0]
    trig[1, 1] = [0, 0, 255]
    attack = PatchAttack.__new__(PatchAttack)
    PatchAttack.__init__(attack, trigger={"kind": "htba", "seed": 1}, size=2)
    attack.trigger = trig
    attack._resized.cache_clear()
    img = np.full((6, 6, 3), 50, np.uint8)
    out = attack.apply(img, (3, 1, 5, 3))
    changed = np.argwhere((out != img).any(-1))
    assert changed.tolist() == [[1, 3], [1, 4], [2, 3], [2, 4]]
    assert out[1, 3].tolist() == [255, 0, 0] and out[2, 4].tolist() == [0, 0, 255]
    assert out[1, 4].tolist() == [0, 0, 0]
    assert (img == 50).all()  # input untouched


def test_patch_size_fraction_and_region():
    a = PatchAttack(size=50 / 224)
    assert a.patch_shape(224, 224) == (50, 50) and a.patch_shape(32, 32) == (7, 7)
    rng = np.random.default_rng(0)
    boxes = np.array([a.sample_box(224, 224, rng) for _ in range(500)])
    # SSL-Backdoor: top-left in [floor(0.25 W), floor(0.75 W) - 50]
    assert boxes[:, 0].min() >= 56 and boxes[:, 0].max() <= 168 - 50
    assert boxes[:, 0].min() <= 58 and boxes[:, 0].max() >= 116  # the whole range is used
    assert ((boxes[:, 2] - boxes[:, 0]) == 50).all()


def test_patch_region_is_the_attacks_own_and_roundtrips():
    rng = np.random.default_rng(0)
    central = PatchAttack(size=16)  # 16 px on 32 px: the central region (8..24) fits one position
    assert {central.sample_box(32, 32, rng) for _ in range(50)} == {(8, 8, 24, 24)}
    wide = PatchAttack(size=16, region=(0.1, 0.9))
    boxes = np.array([wide.sample_box(32, 32, rng) for _ in range(2000)])
    # top-left in [floor(0.1 * 32), floor(0.9 * 32) - 16] = [3, 12] on each axis, every value used
    assert set(boxes[:, 0]) == set(range(3, 13)) and set(boxes[:, 1]) == set(range(3, 13))
    assert (boxes[:, 2:] - boxes[:, :2] == 16).all()
    # an explicit region (the patched validation set's) still wins over the attack's own
    assert wide.sample_box(32, 32, rng, (0.25, 0.75)) == (8, 8, 24, 24)
    assert "region" not in central.config()  # manifests of the default keep their former hash
    again = build_attack(wide.config())
    assert again.region == (0.1, 0.9) and again.config() == wide.config()


def test_jpeg_poisons_are_lossy_copies_and_roundtrip():
    """jpeg=75: the pasted trigger's copies are no longer identical pixels (SSL-Backdoor's saved
    poisons), but close; the default keeps exact copies and its config (and manifest hash)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    exact, lossy = PatchAttack(size=16), PatchAttack(size=16, jpeg=75)
    box = (8, 8, 24, 24)
    e = [exact.apply(im, box)[8:24, 8:24].astype(float) for im in images]
    j = [lossy.apply(im, box)[8:24, 8:24].astype(float) for im in images]
    assert np.array_equal(e[0], e[1])  # pasted pixels: identical copies
    assert not np.array_equal(j[0], j[1]) and not np.array_equal(j[0], e[0])
    rmse = np.sqrt(((j[0] - e[0]) ** 2).mean()) / 255
    assert 0.001 < rmse < 0.2  # lossy (above the part route's 0.001) but still the trigger
    assert "jpeg" not in exact.config() and lossy.config()["jpeg"] == 75
    assert build_attack(lossy.config()).config() == lossy.config()
    with pytest.raises(PoisonCamError, match="jpeg quality must be"):
        PatchAttack(jpeg=100)


@pytest.mark.parametrize("make, message", [
    (lambda: PatchAttack(jpeg=True), "jpeg quality must be a whole number, got True"),
    (lambda: PatchAttack(jpeg=75.0), "jpeg quality must be a whole number, got 75.0"),
    (lambda: PatchAttack(size=True), "patch size must be a number, got True"),
    (lambda: PatchAttack(size="16"), "patch size must be a number, got '16'"),
    (lambda: PatchAttack(alpha=True), "patch alpha must be a number, got True"),
    (lambda: BlendAttack(alpha=False), "blend alpha must be a number, got False"),
    (lambda: FrequencyAttack(window=8.5), "frequency window must be a whole number, got 8.5"),
    (lambda: FrequencyAttack(magnitude=True), "frequency magnitude must be a number, got True")])
def test_attack_numbers_reject_bools_and_strings(make, message):
    """YAML's ``true`` is an int to Python: without the check, jpeg: true was quality 1 and size: true 1 px."""
    with pytest.raises(PoisonCamError, match=re.escape(message)):
        make()


def test_attack_numbers_accept_numpy_numbers():
    cfg = PatchAttack(size=np.int64(16), jpeg=np.int64(75)).config()  # numpy numbers (from arrays) are numbers
    assert type(cfg["jpeg"]) is int and type(cfg["size"]) is float  # and JSON-ready in the manifest


@pytest.mark.parametrize("region", [(0.5, 0.5), (-0.1, 0.5), (0.2, 1.2), (0.1,)])
def test_bad_patch_region_is_one_clear_error(region):
    with pytest.raises(PoisonCamError, match="patch region must be"):
        PatchAttack(region=region)


def test_trigger_larger_than_image_is_an_error():
    with pytest.raises(PoisonCamError, match="larger than the 16x16 image"):
        PatchAttack(size=20).sample_box(16, 16, np.random.default_rng(0))


def test_semi_transparent_patch_blends():
    a = PatchAttack(size=4, alpha=0.5)
    img = np.zeros((8, 8, 3), np.uint8)
    out = a.apply(img, (0, 0, 4, 4))
    full = PatchAttack(size=4).apply(img, (0, 0, 4, 4))
    assert np.abs(out[:4, :4].astype(int) - np.rint(full[:4, :4] * 0.5)).max() <= 1


def test_blend_changes_every_pixel_by_alpha():
    a = BlendAttack(alpha=0.2)
    img = np.full((16, 16, 3), 100, np.uint8)
    out = a.apply(img, (0, 0, 16, 16)).astype(float)
    pattern = a._resized(16, 16)
    assert np.abs(out - (0.8 * 100 + 0.2 * pattern)).max() <= 0.5 + 1e-9


def test_dct_is_orthonormal_and_colour_roundtrip():
    d = dct_matrix(8)
    assert np.allclose(d @ d.T, np.eye(8), atol=1e-12)
    x = np.random.default_rng(0).uniform(0, 255, (4, 4, 3))
    assert np.allclose(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=1e-3)


def test_frequency_trigger_lives_in_the_chosen_dct_coefficients():
    a = FrequencyAttack(magnitude=60, window=16, positions=[(7, 7), (15, 15)])
    img = np.full((16, 16, 3), 120, np.uint8)
    out = a.apply(img, (0, 0, 16, 16))
    d = dct_matrix(16)
    delta = rgb_to_ycbcr(out.astype(float)) - rgb_to_ycbcr(img.astype(float))
    for c in (1, 2):
        coef = d @ delta[..., c] @ d.T
        assert abs(coef[7, 7] - 60) < 4 and abs(coef[15, 15] - 60) < 4
        coef[7, 7] = coef[15, 15] = 0
        assert np.abs(coef).max() < 4  # only rounding noise elsewhere
    assert np.abs(delta[..., 0]).max() < 3  # luminance almost unchanged: not a visible patch


def test_build_attack_from_config_roundtrip_and_errors():
    for attack in (PatchAttack(size=5), BlendAttack(alpha=0.1), FrequencyAttack(magnitude=30)):
        again = build_attack(attack.config())
        img = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        box = (3, 4, 8, 9) if attack.is_patch else (0, 0, 32, 32)
        assert (again.apply(img, box) == attack.apply(img, box)).all()
    with pytest.raises(PoisonCamError, match="unknown attack 'badnet'"):
        build_attack({"name": "badnet"})
    with pytest.raises(PoisonCamError, match="bad arguments for attack 'patch'"):
        build_attack({"name": "patch", "sizee": 3})
    with pytest.raises(PoisonCamError, match="alpha"):
        BlendAttack(alpha=1.5)
