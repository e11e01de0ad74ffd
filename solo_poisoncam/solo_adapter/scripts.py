"""Option A: run solo-learn's own entry scripts (``main_pretrain.py``, ``main_linear.py``) unmodified,
after :func:`register`, with the same command-line arguments.

The scripts are not in solo-learn's wheel, so they are taken from ``$SOLO_LEARN_ROOT`` (a source
checkout), else from beside an editable install of ``solo``.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import List, Optional

from solo_poisoncam.checks import PoisonCamError


def solo_root() -> Path:
    """The solo-learn source checkout: ``$SOLO_LEARN_ROOT``, else the parent of the imported ``solo`` package."""
    env = os.environ.get("SOLO_LEARN_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    from solo_poisoncam.solo_adapter.registration import import_solo

    return Path(import_solo().__file__).resolve().parent.parent


def solo_script(name: str) -> Path:
    path = solo_root() / name
    if not path.is_file():
        raise PoisonCamError(
            f"'{path}' does not exist. solo-learn's entry scripts are not part of its wheel: set SOLO_LEARN_ROOT to "
            "a source checkout of https://github.com/vturrisi/solo-learn")
    return path


def absolute_config_path(argv: List[str], script_dir: Path) -> List[str]:
    """A relative ``--config-path`` / ``-cp`` that names a folder under the working directory but not
    under solo-learn's root is made absolute (Hydra would look for it beside ``main_pretrain.py``),
    so ``--config-path zoo_configs/pretrain/fashion-mnist`` works from this repository."""
    out = list(argv)
    for i, arg in enumerate(out):
        for flag in ("--config-path", "-cp"):
            value = None
            if arg == flag and i + 1 < len(out):
                value, j, prefix = out[i + 1], i + 1, ""
            elif arg.startswith(flag + "="):
                value, j, prefix = arg[len(flag) + 1:], i, flag + "="
            if value and not os.path.isabs(value) and Path(value).is_dir() and not (script_dir / value).is_dir():
                out[j] = prefix + str(Path(value).resolve())
    return out


def run_solo_script(name: str, argv: Optional[List[str]] = None) -> None:
    """``register()``, then run ``$SOLO_LEARN_ROOT/<name>`` as ``__main__`` with ``argv`` (default: ours).

    The script's ``from solo... import`` lines then bind the wrapped functions. Hydra resolves a
    relative ``--config-path`` against the script's folder, as when it is run directly, except
    for folders that exist only under the working directory (:func:`absolute_config_path`).
    """
    from solo_poisoncam.solo_adapter import register

    path = solo_script(name)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # what `python main_pretrain.py` does
    register()
    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = [str(path)] + absolute_config_path(args, path.parent)
    runpy.run_path(str(path), run_name="__main__")
