"""Seeded sampling without replacement: the one helper every draw of the harness uses
(training mixes, metric samples, human chunks), so a draw is the same wherever it is made."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed for one step of one cell (same on every machine and resume)."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def draw_indices(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct indices of ``range(n)`` drawn with ``rng``, in ascending order.

    Raises:
        ValueError: if ``count`` is negative or larger than ``n``.
    """
    if not 0 <= count <= n:
        raise ValueError(f"cannot draw {count} samples from a pool of {n}")
    return np.sort(rng.choice(n, size=count, replace=False))


def fixed_sample(items: Sequence[T], size: int | None, seed: int) -> list[T]:
    """A deterministic sample of ``size`` items (all of them when ``size`` is None or at
    least ``len(items)``), drawn with ``numpy.random.default_rng(seed)``, in their order.

    Raises:
        ValueError: if ``size`` is negative.
    """
    if size is not None and size < 0:
        raise ValueError(f"size must be non-negative, got {size}")
    if size is None or size >= len(items):
        return list(items)
    return [items[i] for i in draw_indices(len(items), size, np.random.default_rng(seed)).tolist()]

