"""Stage declarations: each stage's cache key follows from the settings and code it declares."""

import dataclasses

import pytest

from solo_poisoncam.detect.config import SECTIONS, DetectConfig
from solo_poisoncam.detect.stages import NO_EFFECT, STAGES, closure, setting


def _changed(value):
    """Another value of the same kind (the key only reads it: no validation is needed)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, (list, tuple)):
        return list(value) + [0.5]
    return "set" if value is None else None


def _with(cfg: DetectConfig, name: str, value) -> DetectConfig:
    cfg = DetectConfig.from_dict(cfg.to_dict())
    target = cfg
    *path, last = name.split(".")
    for part in path:
        target = getattr(target, part)
    object.__setattr__(target, last, value)
    return cfg


@pytest.mark.parametrize("method", ["poisoncam", "patchsearch"])
def test_each_declared_setting_changes_its_stage_key(method):
    cfg = DetectConfig(method=method)
    checked = 0
    for st in STAGES.values():
        base = st.key(cfg, {"up": 1})
        for name in st.fields():
            other = _with(cfg, name, _changed(setting(cfg, name)))
            assert st.key(other, {"up": 1}) != base, (st.name, name)
            checked += 1
        # and an upstream change reaches it
        assert st.key(cfg, {"up": 2}) != base
    assert checked > 40


def test_every_setting_is_declared_by_a_stage_or_has_no_effect():
    declared = {f for st in STAGES.values() for f in st.fields()}
    every = set()
    for f in dataclasses.fields(DetectConfig):
        if f.name in SECTIONS:
            every |= {f"{f.name}.{g.name}" for g in dataclasses.fields(SECTIONS[f.name])}
        else:
            every.add(f.name)
    assert every - declared == set(NO_EFFECT)
    assert declared <= every  # nothing declared that does not exist


def test_a_stage_key_holds_its_code_version_and_inputs():
    cfg = DetectConfig()
    key = STAGES["features"].key(cfg, {}, ckpt="abc", side=32)
    assert key["features"]["ckpt"] == "abc" and key["features"]["amp"] == "off" and len(key["features"]["v"]) == 16
    # a stage's code is the modules it names and the package modules they import, less the settings' plumbing
    mods = closure(STAGES["cam"].modules)
    assert {"solo_poisoncam.detect.poisoncam", "solo_poisoncam.detect.cam", "solo_poisoncam.ops.masks"} <= set(mods)
    assert "solo_poisoncam.detect.config" not in mods and "solo_poisoncam.detect.match" not in mods
    assert "solo_poisoncam.detect.decision" in closure(STAGES["templates"].modules)


def test_flat_names_are_their_sections_fields():
    cfg = DetectConfig.from_dict({"refine": 0.0, "poisoncam": {"flip_top": 7}, "test_images_size": 30,
                                  "probe": {"triggers": 5}})
    assert (cfg.poisoncam.refine, cfg.poisoncam.flip_top, cfg.patchsearch.test_images_size) == (0.0, 7, 30)
    assert cfg.poisoncam.templates == 5  # probe.triggers moved to the verdict's templates
    assert DetectConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("given, message", [
    ({"flip_top": "abc"}, "poisoncam.flip_top='abc' must be a whole number"),
    ({"flip_images": 2.5}, "poisoncam.flip_images=2.5 must be a whole number"),
    ({"probe": {"bogus": 3}}, "unknown probe settings ['bogus']"),
    ({"force_remove": 1}, "force_remove=1 must be true or false"),
    ({"flip_top": 0}, "flip_top must be >= 1"),
    ({"nonsense": 1}, "unknown detection settings ['nonsense']"),
])
def test_bad_settings_are_one_line_before_any_work(given, message):
    from solo_poisoncam import PoisonCamError

    with pytest.raises(PoisonCamError) as e:
        DetectConfig.from_dict(given)
    assert message in str(e.value) and "\n" not in str(e.value)
