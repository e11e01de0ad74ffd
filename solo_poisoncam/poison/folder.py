"""A poisoned copy of an image folder, written the way SSL-Backdoor's ``generate_poison.py`` writes
one (notes/reference-protocols.md, 5.3-5.5), so that any trainer reads it as a plain ImageFolder.

    OUT/train/<class>/<name>.JPEG        every training image, the poisons with the trigger pasted
    OUT/val/<class>/<name>.JPEG          the held-out images (when the source has a val/test split)
    OUT/val_patched/<class>/<name>.JPEG  the patched validation set, OUT/val_patched.json its boxes
    OUT/manifest.json, trigger.png, examples.png

Training images keep their own resolution: the trigger, resized to ``width`` px (its longer side,
aspect kept; SSL-Backdoor sets the width, the same for its square HTBA triggers), is pasted opaque
with its top-left corner uniform in [floor(0.25 W), floor(0.75 W - w)] x [floor(0.25 H), floor(0.75 H - h)]
(``PatchAttack.sample_box``; where that range is empty but the trigger fits the image, at the
centre of the central region), on ``rate`` of the target class. Every file, clean ones too, is saved
as JPEG at ``quality`` (PIL's default 75 is what the generator's ``save`` gives), so compression is
no tell. Every held-out image is resized (shorter side to ``val_size`` x 256/224) and centre-cropped
to ``val_size`` (torchvision's Resize + CenterCrop), then gets the trigger at ``width`` px at a random
place in [0.1 S, 0.9 S - w]; every class is patched (an ImageFolder needs every class folder), and
ASR counts the non-target ones.

The manifest's boxes are in each file's own pixels, its ``dataset`` the written folder served at
``size`` (resize and centre crop; ``PoisonManifest.served_boxes`` maps the boxes there) and its
attack the trigger at ``width / val_size`` of the side, what the backdoor check pastes on the
served held-out images. Nothing is written unless every input is valid; OUT appears complete or
not at all (written beside it, then renamed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

from solo_poisoncam.checks import PoisonCamError, check, check_number, check_rate
from solo_poisoncam.data import build_dataset
from solo_poisoncam.data.base import FolderImageDataset
from solo_poisoncam.data.registry import split_folder
from solo_poisoncam.io import write_json
from solo_poisoncam.poison.attacks import EVAL_REGION, PatchAttack
from solo_poisoncam.poison.dataset import make_manifest
from solo_poisoncam.poison.manifest import PoisonManifest, select_poison_indexes
from solo_poisoncam.poison.outputs import write_poison_outputs

EXTENSIONS = (".JPEG", ".jpg", ".jpeg")
SSL_BACKDOOR_WIDTH = 50  # px, watermark_width of its ImageNet-100 configs
SSL_BACKDOOR_SIDE = 224  # its patched validation set's side, and ImageNet's usual serving side


def write_poisoned_folder(src: str, out: str, trigger: Dict[str, Any], target: int, rate: float, seed: int = 0,
                          width: int = SSL_BACKDOOR_WIDTH, quality: int = 75, size: Optional[int] = SSL_BACKDOOR_SIDE,
                          val_size: Optional[int] = None, extension: str = ".JPEG") -> PoisonManifest:
    """Write the poisoned copy of ImageFolder ``src`` to ``out`` (see the module docstring); returns its manifest.

    Args:
        trigger: trigger spec (``trigger_spec``: HTBA from a seed, or a PNG).
        target, rate, seed: target class (sorted class folder order), share of it poisoned, RNG seed.
        width: the trigger's pixel side on every image (SSL-Backdoor: 50).
        quality: JPEG quality of every written file (1-95).
        size: the side ``pretrain`` / ``detect`` serve the folder at (the manifest's); None: as stored.
        val_size: the patched validation side S (default ``size``, or 224 when that is None).
        extension: ``.JPEG`` (ImageNet's) or ``.jpg``.
    """
    out_path, src_path = Path(out), Path(src)
    check(not out_path.exists(), f"'{out}' already exists; choose a new --out (a written folder is never overwritten)")
    check(out_path.resolve() != src_path.resolve(), "--out must differ from the source folder")
    check(extension in EXTENSIONS, f"extension must be one of {', '.join(EXTENSIONS)}, got '{extension}'")
    check_number(width, "trigger width", whole=True)
    check(width >= 1, f"trigger width must be >= 1 px, got {width}")
    if size is not None:
        check_number(size, "size", whole=True)
        check(size >= 1, f"size must be >= 1, got {size}")
    val_size = val_size or size or SSL_BACKDOOR_SIDE
    check_number(val_size, "val size", whole=True)
    rate = check_rate(rate)
    paste = PatchAttack(trigger=trigger, size=float(width))  # opaque, TRAIN_REGION: the generator's paste
    w, h = paste.trigger_shape(width)
    check(width < val_size, f"a {width} px trigger does not fit the {val_size} px patched validation images; "
                            "lower the trigger width or raise --val-size")
    served = PatchAttack(trigger=trigger, size=width / val_size, jpeg=quality)  # checks the quality too

    train = build_dataset("folder", split="train", root=str(src_path))
    check(0 <= target < train.num_classes,
          f"target class {target} does not exist; '{src}' has classes 0..{train.num_classes - 1}")
    poisons = select_poison_indexes(train.targets, target, rate, "target", True, seed)
    small = [train.samples[int(i)][0] for i in poisons if min(np.subtract(train.image_size(int(i)), (w, h))) < 0]
    check(not small, f"{len(small)} image(s) chosen for poisoning are smaller than the {w}x{h} px trigger, "
                     f"e.g. '{small[0] if small else ''}'; lower the trigger width")
    held_out = _held_out(src_path)
    val = build_dataset("folder", split="val", root=str(src_path)) if held_out else None
    names = {"train": _out_names(train, extension)}
    if val is not None:
        names["val"] = _out_names(val, extension)

    manifest = make_manifest(train, paste, target, rate, "target", True, seed)  # boxes in the files' pixels
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent))
    try:
        boxes = manifest.box_map()
        for i, name in enumerate(names["train"]):
            arr = train.get_array(i)
            box = boxes.get(i)
            save_jpeg(paste.apply(arr, tuple(int(v) for v in box)) if box is not None else arr,
                  tmp / "train" / name, quality)
        patched = None
        if val is not None:
            patched = _write_val(val, names["val"], paste, tmp, quality, val_size, seed, target)
            write_json(tmp / "val_patched.json", patched)
        written = build_dataset("folder", split="train", root=str(tmp), size=size)
        order = {str(Path(p).relative_to(written.root)): j for j, (p, _) in enumerate(written.samples)}
        new = np.array([order[names["train"][int(i)]] for i in manifest.indexes], dtype=np.int64)
        rank = np.argsort(new)
        spec = dict(written.spec, root=str(out_path.resolve()))
        manifest = PoisonManifest(
            dataset=spec, fingerprint=written.fingerprint(), num_samples=len(written), attack=served.config(),
            target=manifest.target, target_name=manifest.target_name, rate=rate, rate_of="target", targeted=True,
            seed=seed, indexes=new[rank], boxes=manifest.boxes[rank], image_sizes=manifest.image_sizes[rank],
            written={"source": str(src_path.resolve()), "trigger_width": int(width), "quality": int(quality),
                     "extension": extension, "val_size": int(val_size),
                     "val_patched": None if patched is None else len(patched["images"])})
        # the examples at a common side even where the folder is served as stored
        shown = written if size is not None else build_dataset("folder", split="train", root=str(tmp), size=val_size)
        write_poison_outputs(tmp, shown, served, manifest)
        os.rename(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _held_out(root: Path) -> bool:
    try:
        split_folder(root, "val")
    except PoisonCamError:
        return False
    return True


def _out_names(ds: FolderImageDataset, extension: str) -> List[str]:
    """Each file's path under its split folder with the new extension; two sources may not meet in one name."""
    names = [str(Path(p).relative_to(ds.root).with_suffix(extension)) for p, _ in ds.samples]
    seen: Dict[str, str] = {}
    for (p, _), n in zip(ds.samples, names):
        check(n not in seen, f"'{p}' and '{seen.get(n)}' would both be written as '{n}'; rename one")
        seen[n] = p
    return names


def save_jpeg(arr: np.ndarray, path: Path, quality: int) -> None:
    """Save ``arr`` (H, W, 3 uint8) as a JPEG at ``quality``, making its folder: every file a written folder holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=int(quality))


def val_crop(img: Image.Image, side: int) -> Image.Image:
    """SSL-Backdoor's validation geometry at ``side``: Resize(side x 256/224) + CenterCrop(side) (torchvision)."""
    from torchvision.transforms import functional as TF

    return TF.center_crop(TF.resize(img, round(side * 256 / 224)), [side, side])


def _write_val(val: FolderImageDataset, names: List[str], paste: PatchAttack, tmp: Path, quality: int,
               side: int, seed: int, target: int) -> Dict[str, Any]:
    """OUT/val (the held-out files as JPEG) and OUT/val_patched (cropped to ``side``, trigger pasted)."""
    rng = np.random.default_rng([seed, 2])  # the stream of PatchedDataset's places
    boxes = []
    for i, name in enumerate(names):
        img, _ = val[i]
        save_jpeg(np.asarray(img), tmp / "val" / name, quality)
        box = paste.sample_box(side, side, rng, EVAL_REGION)
        save_jpeg(paste.apply(np.asarray(val_crop(img, side)), box), tmp / "val_patched" / name, quality)
        boxes.append([int(v) for v in box])
    return {"side": int(side), "region": list(EVAL_REGION), "target": int(target),
            "images": [{"file": n, "label": int(c), "box": b} for n, c, b in zip(names, val.targets, boxes)]}


def reserve_manifest(manifest: PoisonManifest, size: Optional[int]) -> PoisonManifest:
    """The manifest of the same written folder served at another ``size`` (the files are unchanged)."""
    check(manifest.in_files, "only a written folder's manifest (poisoncam poison --write-folder) can be re-served")
    spec = dict(manifest.dataset, size=size)
    return manifest.served_as(spec, build_dataset(**spec).fingerprint())
