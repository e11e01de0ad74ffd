"""Detection folders side by side: verdict, removed, quality, masked forwards and stage seconds, and
which removed sets are identical (the cluster screen's tuning table, docs/results.md).

    python benchmarks/tabulate_detections.py --name screen-tuning \\
        --dirs runs/gf/scr-base runs/gf/scr-s4 runs/eq/scr-clean-base runs/eq/scr-clean-s4 \\
        --note "each folder: poisoncam detect --ckpt ... --set screen=0 | screen=4 (its metrics.json holds the config)"

Each folder is one ``poisoncam detect --out`` folder; the table is read from its metrics.json and
removed.txt (no detection is run). Seconds are each stage's compute time as recorded (cache hits count
what they cost when computed).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from solo_poisoncam.detect.cam import REFINE_FORWARDS  # noqa: E402

from common import environment, markdown_table, print_tables, stage_seconds, write_results  # noqa: E402

HEAD = ["folder", "screen", "verdict", "removed", "same removed set as", "precision", "recall", "trigger det. acc",
        "AUROC", "masked forwards", "refined windows", "forwards / image (x 84 per refined)", "stage s"]


def row(folder: Path, d, removed_sets):
    m, t, cfg = d["metrics"], d["timings"], d["config"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    removed = removed_sets[folder]
    same = [str(f) for f, r in removed_sets.items() if r == removed and f != folder]
    pc = cfg.get("poisoncam", {})
    n = t["images"]
    masked = t.get("masked_forwards") or 0
    refined = t.get("refined_windows")
    log = folder.with_name(folder.name + ".log")
    if refined is None and log.is_file():  # folders from before the count was recorded: the stage line
        found = re.findall(r"refine: [0-9.]+ s \((\d+) images\)", log.read_text())
        refined = int(found[-1]) if found else None
    refined = refined or 0
    v = m.get("verdict", {})
    return [str(folder), str(pc.get("screen", 0)), ("found" if v.get("found") else "none") if v else "-",
            f"{m['num_removed']}/{m['num_samples']}", ", ".join(same) or "-", fmt(m.get("precision")),
            fmt(m.get("recall")), fmt(m.get("trigger_detection_accuracy")), fmt(m.get("auroc")), f"{masked:,}",
            str(refined), f"{(masked + REFINE_FORWARDS * refined) / n:.1f}", f"{stage_seconds(t):.0f}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dirs", nargs="+", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    dirs = [Path(x) for x in args.dirs]
    removed_sets = {f: frozenset((f / "removed.txt").read_text().split()) for f in dirs}
    raw = [json.loads((f / "metrics.json").read_text()) for f in dirs]
    tables = {"detections side by side": markdown_table(HEAD, [row(f, d, removed_sets) for f, d in zip(dirs, raw)])}
    settings = {"dirs": args.dirs, "note": args.note}
    return print_tables(tables, write_results(args.name, environment(), settings, tables, raw))


if __name__ == "__main__":
    raise SystemExit(main())
