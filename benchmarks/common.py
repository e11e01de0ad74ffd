"""Shared by the benchmark scripts: environment header, mean +- std, table writing."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> Dict[str, str]:
    import torch

    import solo_poisoncam

    if torch.cuda.is_available():
        device = f"GPU {torch.cuda.get_device_name(0)}"
    else:
        device = f"CPU, {torch.get_num_threads()} threads ({platform.machine()})"
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"), "device": device,
            "torch": torch.__version__, "solo_poisoncam": solo_poisoncam.__version__,
            "python": platform.python_version(), "command": " ".join(["python"] + sys.argv)}


def mean_std(values: Sequence[Any], digits: int = 3, pct: bool = False) -> str:
    v = [float(x) for x in values if x is not None]
    if not v:
        return "n/a"
    m, s = float(np.mean(v)), float(np.std(v))
    if pct:
        return f"{m:.1%} ± {s:.1%}" if len(v) > 1 else f"{m:.1%}"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(v) > 1 else f"{m:.{digits}f}"


def largest_budget(evaluation: Dict[str, Any]):
    """(label fraction key, linear-probe metrics) of an evaluation's largest label budget."""
    frac = max(evaluation["budgets"], key=float)
    return frac, evaluation["budgets"][frac]["linear"]


def stage_seconds(t: Dict[str, Any]) -> float:
    """Seconds a detection's stages cost when computed (cache hits count what they cost at the time)."""
    return float(sum(v for v in t.get("stage_compute_s", {}).values() if v is not None))


def markdown_table(head: List[str], rows: List[List[str]]) -> str:
    from solo_poisoncam.report.tables import markdown

    return markdown((head, rows))


def write_results(name: str, env: Dict[str, str], settings: Dict[str, Any], tables: Dict[str, str],
                  raw: Any) -> Path:
    """benchmarks/results/<name>.md (tables with device, settings, command) and <name>.json (raw)."""
    from solo_poisoncam.io import write_json, write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    head = [f"# {name}", "", f"- date: {env['date']}", f"- device: {env['device']}",
            f"- versions: torch {env['torch']}, solo-poisoncam {env['solo_poisoncam']}, python {env['python']}",
            f"- command: `{env['command']}`", f"- settings: `{json.dumps(settings, sort_keys=True)}`", ""]
    body = [f"## {title}\n\n{table}\n" for title, table in tables.items()]
    path = RESULTS / f"{name}.md"
    write_text(path, "\n".join(head + body))
    write_json(RESULTS / f"{name}.json", {"environment": env, "settings": settings, "results": raw})
    return path


def print_tables(tables: Dict[str, str], path: Path) -> int:
    """Print every table and where they were written; the exit status of a finished benchmark."""
    for title, table in tables.items():
        print(f"\n{title}\n{table}")
    print(f"\n-> {path}")
    return 0


def kept_minus_clean(rows: List[Dict[str, Any]], asr_cells: Callable[[Dict[str, Any]], Dict[str, float]]) -> str:
    """Each kept-set model's ASR minus the clean-data model's of the same SSL seed, cell by cell
    (``asr_cells(row)``: ASR per evaluation cell, the same keys for every row), as a markdown table
    of pairs, mean ± std, range and how many lie within 2 points; "" when there is no pair."""
    clean = {r["seed"]: asr_cells(r) for r in rows if r["model"] == "clean-data"}
    body = []
    for model in dict.fromkeys(r["model"] for r in rows if r["model"] not in ("clean-data", "undefended")):
        d = [a - clean[r["seed"]][k] for r in rows if r["model"] == model and r["seed"] in clean
             for k, a in asr_cells(r).items()]
        if d:
            body.append([model, str(len(d)), mean_std(d, pct=True), f"{min(d):.1%} - {max(d):.1%}",
                         f"{sum(abs(x) <= 0.02 for x in d)} of {len(d)}"])
    return markdown_table(["model", "pairs", "ASR difference", "range", "within 2 points"], body) if body else ""


def parse_variant(text: str) -> Dict[str, Any]:
    """``--variant "NAME[:key=value;key=value]"`` -> {"name", "sets"}: ``poisoncam detect --set`` items."""
    name, _, sets = text.partition(":")
    return {"name": name, "sets": [s.strip() for s in sets.split(";") if s.strip()]}
