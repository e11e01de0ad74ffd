"""Are two trees of detection folders the same detections? (a restructure must not change behaviour)

    python benchmarks/compare_detections.py BEFORE AFTER

For each folder under BEFORE with a metrics.json: removed.txt, kept.txt, scores.npy, windows.npy,
indexes.npy, probability.npy and metrics.json's metrics (less ``input``, which a later version adds)
compared with the same folder under AFTER. Prints one line per folder; exits 1 if any differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def compare(before: Path, after: Path):
    diffs = []
    for name in ("removed.txt", "kept.txt"):
        if (before / name).read_text() != (after / name).read_text():
            diffs.append(name)
    for name in ("scores.npy", "windows.npy", "indexes.npy", "probability.npy"):
        a, b = before / name, after / name
        if a.exists() != b.exists() or (a.exists() and not np.array_equal(np.load(a), np.load(b))):
            diffs.append(name)
    ma, mb = (json.loads((d / "metrics.json").read_text())["metrics"] for d in (before, after))
    ma.pop("input", None), mb.pop("input", None)
    diffs += [f"metrics.{k}" for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k)]
    return diffs, mb.get("num_removed")


def main(argv=None) -> int:
    before, after = (Path(p) for p in (argv or sys.argv[1:]))
    bad = 0
    for folder in sorted(p.parent for p in before.rglob("metrics.json")):
        other = after / folder.relative_to(before)
        if not (other / "metrics.json").is_file():
            print(f"{folder.relative_to(before)}: missing after")
            bad += 1
            continue
        diffs, removed = compare(folder, other)
        print(f"{folder.relative_to(before)}: {'identical' if not diffs else 'DIFFERS ' + ', '.join(diffs)} "
              f"({removed} removed)")
        bad += bool(diffs)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
