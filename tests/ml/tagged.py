"""Volumes for loop tests: each slice carries its own index, so a scripted predictor knows what it was sent."""

from __future__ import annotations

import numpy as np


def tagged_volume(depth: int, size: int = 24) -> np.ndarray:
    """``(depth, size, size)`` float32 whose pixel ``(0, 0)`` of slice z holds z."""
    volume = np.full((depth, size, size), 50.0, dtype=np.float32)
    volume[:, 0, 0] = np.arange(depth)
    return volume


def square_truth(depth: int, first: int, last: int, size: int = 24) -> np.ndarray:
    """An 8x8 square on slices ``first..last`` (inclusive)."""
    truth = np.zeros((depth, size, size), dtype=bool)
    truth[first : last + 1, 8:16, 8:16] = True
    return truth
