"""solo-learn adapter: existing solo-learn commands gain ``+poison=...`` and ``+detect=...`` flags
and a ``cluster_head`` method.

Nothing here imports solo-learn at import time; :func:`register` does, so ``import
solo_poisoncam`` works on machines without solo-learn (its tests skip there).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

SOLO_INSTALL_HELP = (
    "solo-learn is not importable. It is not usable from PyPI (only a 2021 release pinned to torch 1.9); "
    "install it from its repository beside this package (README, section solo-learn):\n"
    "  git clone https://github.com/vturrisi/solo-learn ~/solo-learn\n"
    "  pip install 'setuptools<81' wheel   # its setup.py and lightning 2.1.2 import pkg_resources\n"
    "  echo 'setuptools<81' > /tmp/c.txt\n"
    "  PIP_NO_BUILD_ISOLATION=0 PIP_CONSTRAINT=/tmp/c.txt pip install --no-build-isolation -e ~/solo-learn\n"
    "and set SOLO_LEARN_ROOT to that checkout (its main_pretrain.py and scripts/ are not in the wheel)."
)


def register(main_globals: Optional[Dict[str, Any]] = None) -> None:
    """Plug solo-poisoncam into solo-learn; idempotent.

    Registers ``METHODS["cluster_head"]``, wraps ``solo.args.pretrain.parse_cfg`` (``poison.*`` /
    ``detect.*`` defaults and checks) and ``solo.data.pretrain_dataloader.prepare_datasets`` (the
    poisoned-dataset wrapper), and gives every ``BaseMethod`` our callbacks through
    ``configure_callbacks``. ``main_globals`` (the globals of an already-running
    ``main_pretrain.py``) also get the wrapped names rebound, because that script binds them with
    ``from ... import`` before Hydra starts.

    Raises:
        PoisonCamError: solo-learn is not importable (the message says how to install it).
    """
    from solo_poisoncam.solo_adapter.registration import register as _register

    _register(main_globals=main_globals)


def is_registered() -> bool:
    from solo_poisoncam.solo_adapter.registration import STATE

    return bool(STATE.registered)


__all__ = ["register", "is_registered", "SOLO_INSTALL_HELP"]
