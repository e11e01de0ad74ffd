import os
import sys

# wandb reads its mode once, at import: set it before anything imports wandb.
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402

_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_DEVICES)
def device(request) -> torch.device:
    """Every test that takes ``device`` runs on the CPU and, when available, on CUDA."""
    return torch.device(request.param)


def pytest_terminal_summary(terminalreporter):
    """Name the whole test files skipped at import (a module-level importorskip counts as one
    'skipped' however many tests the file holds) and how many tests each holds."""
    import ast
    from pathlib import Path

    root = Path(str(terminalreporter.config.rootpath))
    files = {}
    for rep in terminalreporter.stats.get("skipped", []):
        if rep.when != "collect":
            continue
        path = Path(str(rep.fspath))
        path = path if path.is_absolute() else root / path
        if path.suffix == ".py" and path.is_file():
            tree = ast.parse(path.read_text())
            count = sum(isinstance(n, ast.FunctionDef) and n.name.startswith("test") for n in ast.walk(tree))
            reason = rep.longrepr[-1] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
            files[path.relative_to(root).as_posix()] = (count, reason)
    if files:
        total = sum(c for c, _ in files.values())
        terminalreporter.write_line(f"whole files skipped ({total} test functions not run):")
        for name, (count, reason) in sorted(files.items()):
            terminalreporter.write_line(f"  {name}: {count} tests - {reason}")
