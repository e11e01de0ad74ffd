"""Attacks, triggers, the poison manifest and the poisoned-dataset wrappers."""

from solo_poisoncam.poison.attacks import ATTACKS, Attack, BlendAttack, FrequencyAttack, PatchAttack, build_attack
from solo_poisoncam.poison.dataset import PatchedDataset, PoisonedDataset, make_manifest
from solo_poisoncam.poison.manifest import PoisonManifest, box_iou, select_poison_indexes
from solo_poisoncam.poison.triggers import TRIGGERS, build_trigger, htba_trigger, png_trigger, trigger_spec

__all__ = ["ATTACKS", "Attack", "BlendAttack", "FrequencyAttack", "PatchAttack", "build_attack", "PatchedDataset",
           "PoisonedDataset", "make_manifest", "PoisonManifest", "box_iou", "select_poison_indexes", "TRIGGERS",
           "build_trigger", "htba_trigger", "png_trigger", "trigger_spec"]
