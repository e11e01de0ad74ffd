"""Detection: cluster activation masking, candidate trigger windows, poison scores (mask ops: ``solo_poisoncam.ops``).

Import-light: the submodules (and kornia) load on first use of a name listed here.
"""

from importlib import import_module

_LAZY = {"max_sum_window": "window", "paste_patches": "window", "crop_boxes": "window"}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
