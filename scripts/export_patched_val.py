"""Write the patched validation set of a poisoning as an ImageFolder that solo-learn's ``main_linear.py``
reads as its ``data.val_path``, so that its ``val_acc1`` *is* the attack success rate.

    python scripts/export_patched_val.py --manifest trained_models/byol/0/manifest.json --out datasets/patched-val

Every non-target image of the held-out split (the manifest's data set, split ``test``/``val``, or
``--val-root``) gets the trigger pasted at a random place in 10-90% of the side (the evaluation
set of ``poisoncam eval`` and the backdoor check), and is filed under the *target* class folder:
a prediction counts as correct exactly when it is the target class. torchvision's ImageFolder
numbers the folders present, and refuses empty ones, so the single folder is class 0: the export
works for ``target 0`` only and refuses another target (use ``poisoncam eval`` there). Writes
nothing unless every image was read; refuses a non-empty ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="poison manifest (manifest.json or its folder)")
    p.add_argument("--out", required=True, help="output ImageFolder (gets one folder: the target class)")
    p.add_argument("--val-root", default=None, help="held-out image folder (default: the manifest data's test/val split)")
    p.add_argument("--seed", type=int, default=0, help="trigger placement")
    args = p.parse_args(argv)

    from solo_poisoncam.checks import PoisonCamError, check
    from solo_poisoncam.eval.backdoor import validation_split
    from solo_poisoncam.poison import PatchedDataset, PoisonManifest, build_attack

    try:
        manifest = PoisonManifest.load(args.manifest)
        check(manifest.target == 0, f"the manifest's target is class {manifest.target}; an ImageFolder with one "
              "folder can only stand for class 0 (use `poisoncam eval` for the ASR of other targets)")
        out = Path(args.out)
        check(not out.exists() or not any(out.iterdir()), f"'{out}' exists and is not empty")
        val = validation_split(manifest.dataset, None, args.val_root)
        patched = PatchedDataset(val, build_attack(manifest.attack), manifest.target, seed=args.seed)
        name = manifest.target_name or str(manifest.target)
        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
            folder = Path(tmp) / name
            folder.mkdir()
            for j in range(len(patched)):
                Image.fromarray(patched.get_array(j)).save(folder / f"{int(patched.indexes[j]):06d}.png")
            out.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(out / name))
    except PoisonCamError as e:
        print(f"export_patched_val: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(patched)} patched non-target images of '{getattr(val, 'root', val.name)}' to {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
