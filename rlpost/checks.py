"""Range checks of constructor arguments: each refusal is a ``ValueError`` naming the field and the value.

Written as ``not (v > 0)`` rather than ``v <= 0`` so that NaN is refused too. Imports nothing of rlpost.
"""

from __future__ import annotations


def positive(**values: float) -> None:
    """Each value must be > 0."""
    for name, v in values.items():
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v}")


def non_negative(**values: float) -> None:
    """Each value must be >= 0 (0 usually means "off")."""
    for name, v in values.items():
        if not v >= 0:
            raise ValueError(f"{name} must be >= 0, got {v}")


def probability(**values: float) -> None:
    """Each value must be in (0, 1] (a nucleus mass such as ``top_p``, a fraction of a batch)."""
    for name, v in values.items():
        if not 0 < v <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {v}")
