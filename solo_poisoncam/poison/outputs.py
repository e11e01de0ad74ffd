"""A poisoning as files: draw the poisons over a dataset, then ``trigger.png``, ``examples.png`` and
``manifest.json`` (the ground truth; written last, so its presence marks a complete output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
from PIL import Image

from solo_poisoncam.checks import check
from solo_poisoncam.data import build_dataset
from solo_poisoncam.data.base import ImageDataset
from solo_poisoncam.io import hash_obj
from solo_poisoncam.poison.attacks import Attack, build_attack
from solo_poisoncam.poison.dataset import PoisonedDataset, make_manifest
from solo_poisoncam.poison.manifest import PoisonManifest
from solo_poisoncam.viz import TRUE_COLOUR, save_png, tile


def poison_dataset(dataset_name: str, split: str, ds_kwargs: Dict[str, Any], attack_cfg: Dict[str, Any],
                   target: int, rate: float, rate_of: str, targeted: bool,
                   seed: int) -> Tuple[ImageDataset, Attack, PoisonManifest]:
    dataset = build_dataset(dataset_name, split=split, **ds_kwargs)
    attack = build_attack(attack_cfg)
    manifest = make_manifest(dataset, attack, target, rate, rate_of, targeted, seed)
    return dataset, attack, manifest


def write_poison_outputs(out: Path, dataset: ImageDataset, attack: Attack, manifest: PoisonManifest,
                         examples: int = 16) -> None:
    """trigger.png, examples.png, then manifest.json (its presence marks a complete output). Every
    picture is made before the first file is written, so a bad image leaves nothing behind, and a
    folder holding a manifest of other poisons is refused, never overwritten."""
    if (out / "manifest.json").is_file():
        old = PoisonManifest.load(out)
        same = lambda m: hash_obj({k: v for k, v in m.to_dict().items() if k != "created"})  # noqa: E731
        check(same(old) == same(manifest),
              f"'{out}' holds a poison manifest of other settings ({old.summary()}); choose another --out or "
              "delete it")
    trigger = getattr(attack, "trigger", None)
    poisoned = PoisonedDataset(dataset, manifest, attack=attack, verify=False)
    take = manifest.indexes[:examples]
    images = [poisoned.get_array(int(i)) for i in take]
    boxes = [[(np.rint(poisoned.box(int(i))), TRUE_COLOUR)] if attack.is_patch else [] for i in take]
    scale = max(1, 128 // max(1, images[0].shape[0])) if images else 1
    grid = tile(images, boxes, scale=scale, captions=[str(int(i)) for i in take])
    out.mkdir(parents=True, exist_ok=True)
    if trigger is not None:
        save_png(Image.fromarray(trigger), out / "trigger.png")
    save_png(grid, out / "examples.png")
    manifest.save(out / "manifest.json")


def resize_note(attack: Attack, dataset: ImageDataset) -> str:
    """Says when a trigger image is pasted at another size than its own (a PNG's pixels are not kept)."""
    trigger = getattr(attack, "trigger", None)
    if trigger is None or not attack.is_patch:
        return ""
    w, h = attack.patch_shape(*dataset.image_size(0))
    th, tw = trigger.shape[:2]
    if (w, h) == (tw, th):
        return ""
    return (f"note: the {tw}x{th} px trigger is pasted at {w}x{h} px (patch size {attack.size:.4g} of the image "
            "side; --patch-size sets it)")
