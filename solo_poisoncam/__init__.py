"""solo-poisoncam: poison an SSL training set, find the poisons by cluster activation masking, prove they are gone.

Importing this package never imports solo-learn; :func:`register` does, lazily.
"""

__version__ = "0.1.0"

from solo_poisoncam.checks import PoisonCamError


def register(main_globals=None):
    """Register ``cluster_head``, the poisoned-dataset wrapper and the detection hook into solo-learn.

    Idempotent. Raises :class:`PoisonCamError` when solo-learn is not importable.
    """
    from solo_poisoncam.solo_adapter import register as _register

    return _register(main_globals=main_globals)


__all__ = ["PoisonCamError", "register", "__version__"]
