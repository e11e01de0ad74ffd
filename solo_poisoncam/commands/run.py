"""Run the whole chain from a config: poison, train the threat model, check the backdoor took,
detect (PoisonCAM and/or PatchSearch), retrain on each kept set, train a clean-data reference,
evaluate every model (clean accuracy, ASR, FP) and write OUT/report.html, OUT/report.md and
OUT/results.json. Stages are cached: re-running the command resumes an interrupted run."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None,
                   help="run config YAML (zoo_configs/run/*.yaml); default: the embedded demo config")
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides, e.g. pretrain.epochs=3")
    p.add_argument("--out", default=None, help="run folder (default runs/<name>)")
    p.add_argument("--quick", action="store_true", help="a first look: smaller data, fewer epochs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def execute(config, overrides, out, quick: bool, quiet: bool) -> int:
    from pathlib import Path

    from solo_poisoncam.pipeline.config import load_run_config
    from solo_poisoncam.pipeline.run import run_chain
    from solo_poisoncam.report.render import console_summary

    cfg = load_run_config(config, overrides, quick=quick)
    out = Path(out or f"runs/{cfg['name']}{'-quick' if quick else ''}")
    results = run_chain(cfg, out, progress=not quiet)
    print()
    print(console_summary(results))
    print(f"\nreport: {out / 'report.html'} (and report.md, results.json)")
    return 0


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config:  # only overrides were given
        overrides, config = [config] + overrides, None
    return execute(config, overrides, args.out, args.quick, args.quiet)
