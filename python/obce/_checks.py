"""Checks of the counts a user passes, one rule everywhere: a numpy integer is an integer, a bool is not."""

from __future__ import annotations

import numbers


def checked_int(value, name: str, *, minimum: int = 1, alternative: str = "") -> int:
    """``value`` as an int; ValueError naming ``name`` if it is no integer of at least ``minimum``.

    ``alternative`` completes the message for what else is allowed (``" or None"``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {wanted}{alternative}, got {value!r}")
    return int(value)


def checked_seed(seed) -> int:
    """``seed`` as an int; TypeError if it is no integer."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return int(seed)
