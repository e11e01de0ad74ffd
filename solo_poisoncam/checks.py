"""Input validation that raises one clear error naming the problem."""

from __future__ import annotations

import numbers
from typing import Sequence

import torch


class PoisonCamError(ValueError):
    """Raised for bad user input: the message names the problem and, where possible, the fix."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`PoisonCamError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise PoisonCamError(message)


def check_shape(x: torch.Tensor, dims: Sequence[str], name: str = "input") -> None:
    """Check ``x`` has ``len(dims)`` dimensions; integer entries of ``dims`` must match exactly.

    >>> check_shape(torch.zeros(2, 3, 4, 4), ["B", "3", "H", "W"])
    """
    if x.dim() != len(dims):
        raise PoisonCamError(f"{name} must have shape ({', '.join(dims)}), got {tuple(x.shape)}")
    for size, dim in zip(x.shape, dims):
        if dim.isdigit() and size != int(dim):
            raise PoisonCamError(f"{name} must have shape ({', '.join(dims)}), got {tuple(x.shape)}")


def check_pair(v, name: str):
    """An int or an (h, w) pair as a pair of positive ints."""
    pair = (int(v), int(v)) if isinstance(v, (int, float)) else tuple(int(t) for t in v)
    check(len(pair) == 2 and min(pair) >= 1, f"{name} must be a positive int or (h, w) pair, got {v}")
    return pair


def check_number(value, name: str, whole: bool = False) -> None:
    """``value`` is a number (a whole one with ``whole``), not a bool (YAML's ``true`` is no size).

    >>> check_number(0.5, "alpha"); check_number(75, "jpeg", whole=True)
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and whole:
        ok = isinstance(value, numbers.Integral)
    check(ok, f"{name} must be {'a whole number' if whole else 'a number'}, got {value!r}")


def check_rate(rate: float, name: str = "rate") -> float:
    """A poisoning rate must lie in (0, 1]."""
    rate = float(rate)
    check(0.0 < rate <= 1.0, f"{name} must be in (0, 1], got {rate}")
    return rate
