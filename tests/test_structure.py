"""The package reads one way (docs/design.md, "Package layout"): data -> poison -> threat model ->
features -> clusters -> maps -> scores -> lists -> eval -> report. No module imports one that
stands later in that flow; the detector never imports ground truth; library code never imports the
CLI. Walks every import statement (top level and inside functions) with ast."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "solo_poisoncam"

# each top-level module or sub-package -> its place in the flow (equal ranks may import each other)
RANK = {
    "__init__": 0, "checks": 0, "io": 0, "registry": 0, "timing": 0, "viz": 0, "conf": 0,
    "data": 1, "poison": 2, "models": 3, "losses": 3, "ops": 3, "ssl": 4, "engine": 5, "cluster": 6,
    "detect": 7, "eval": 8, "report": 9, "pipeline": 10, "commands": 11, "cli": 11, "solo_adapter": 12,
}
# the façade: `solo_poisoncam.register` lazily forwards to the solo-learn adapter
ALLOWED = {("__init__", "solo_poisoncam.solo_adapter")}
# ground truth stays out of the detector: it returns predictions, eval/ scores them
FORBIDDEN = {"detect": ("solo_poisoncam.poison", "solo_poisoncam.eval")}


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def violations(pkg: Path = PKG):
    found = []
    for path in sorted(pkg.rglob("*.py")):
        src = path.relative_to(pkg).parts[0].removesuffix(".py")
        for line, module in imports(path):
            if not module.startswith("solo_poisoncam"):
                continue
            dst = unit(module)
            where = f"{path.relative_to(pkg.parent)}:{line} imports {module}"
            if (src, module) in ALLOWED or dst == src:
                continue
            if RANK[dst] > RANK[src]:
                found.append(f"{where} (later in the flow: {dst} after {src})")
            if any(module.startswith(f) for f in FORBIDDEN.get(src, ())):
                found.append(f"{where} (the detector must not see ground truth or evaluation)")
    return found


def test_every_module_has_a_place_in_the_flow():
    units = {p.relative_to(PKG).parts[0].removesuffix(".py") for p in PKG.glob("*") if p.suffix == ".py" or p.is_dir()}
    assert units - {"__pycache__"} <= set(RANK), sorted(units - set(RANK) - {"__pycache__"})


def test_no_import_points_back_in_the_flow():
    assert violations() == []


def test_the_walk_catches_a_backward_import(tmp_path):
    """The check can fail: a cluster module importing detect is reported."""
    fake = tmp_path / "solo_poisoncam"
    (fake / "cluster").mkdir(parents=True)
    (fake / "cluster" / "x.py").write_text("def f():\n    from solo_poisoncam.detect.window import crop_boxes\n")
    (fake / "detect").mkdir()
    (fake / "detect" / "y.py").write_text("from solo_poisoncam.poison.manifest import PoisonManifest\n")
    found = violations(fake)
    assert len(found) == 2
    assert "cluster/x.py:2 imports solo_poisoncam.detect.window (later in the flow: detect after cluster)" in found[0]
    assert "detect/y.py:1" in found[1] and "must not see ground truth" in found[1]


@pytest.mark.parametrize("module", ["solo_poisoncam.detect.pipeline", "solo_poisoncam.cluster.head"])
def test_lower_stages_import_without_later_ones(module):
    """Importing a stage loads nothing that stands later in the flow."""
    import subprocess
    import sys

    code = (f"import sys, {module}; later = sorted(m for m in sys.modules if m.startswith("
            "('solo_poisoncam.eval', 'solo_poisoncam.report', 'solo_poisoncam.pipeline', 'solo_poisoncam.commands'))); "
            "print(later)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
