"""Run-length codec for binary masks (mirrored by ``frontend/src/maskcodec.js``).

Wire format (docs/ARCHITECTURE.md): the mask is flattened in C order and described by run lengths that
alternate background / foreground, starting with a background run (which may be 0). The runs sum to the
number of pixels. Example: ``[[0, 1, 1], [1, 0, 0]]`` -> ``[1, 3, 2]``.

Both directions are vectorised (no Python loop over pixels): a 512x512 slice takes well under 5 ms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _encode_flat(flat: np.ndarray) -> list[int]:
    n = flat.size
    if n == 0:
        return [0]
    change_positions = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    boundaries = np.concatenate(([0], change_positions, [n]))
    runs = np.diff(boundaries)
    if flat[0]:
        # The format always opens with a background run.
        runs = np.concatenate(([0], runs))
    return runs.tolist()


def _decode_flat(rle: Sequence[int], size: int) -> np.ndarray:
    try:
        runs = np.asarray(rle)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"RLE must be a list of integers: {exc}") from None
    if runs.ndim != 1:
        raise ValueError("RLE must be a flat list of integers")
    if runs.size == 0:
        raise ValueError("RLE is empty; an all-background mask is [Y*X]")
    if runs.dtype == np.bool_ or not np.issubdtype(runs.dtype, np.integer):
        # Accept integral floats such as 3.0 (JSON numbers), refuse 2.5, booleans and strings.
        if runs.dtype.kind != "f" or not np.all(np.isfinite(runs)) or np.any(runs != np.round(runs)):
            raise ValueError("RLE runs must be integers")
        runs = runs.astype(np.int64)
    runs = runs.astype(np.int64, copy=False)
    if np.any(runs < 0):
        raise ValueError("RLE runs must not be negative")
    total = int(runs.sum())
    if total != size:
        raise ValueError(f"RLE runs sum to {total}, the mask has {size} pixels")
    values = np.zeros(runs.size, dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs)


def encode_rle(mask2d: np.ndarray) -> list[int]:
    """Run lengths of a 2D mask ``(Y, X)`` (any dtype; non-zero = foreground)."""
    mask = np.asarray(mask2d)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle needs a 2D (Y, X) mask, got shape {mask.shape}")
    return _encode_flat(mask.astype(bool, copy=False).reshape(-1))


def decode_rle(rle: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """Bool mask ``(Y, X)`` from run lengths; ValueError on negative/non-integer runs or a wrong sum."""
    if len(shape) != 2 or any(int(side) < 0 for side in shape):
        raise ValueError(f"decode_rle needs a (Y, X) shape, got {shape}")
    height, width = (int(side) for side in shape)
    return _decode_flat(rle, height * width).reshape(height, width)


def encode_rle_3d(mask3d: np.ndarray) -> list[int]:
    """Run lengths of a 3D mask ``(Z, Y, X)`` flattened in C order (same wire format as 2D)."""
    mask = np.asarray(mask3d)
    if mask.ndim != 3:
        raise ValueError(f"encode_rle_3d needs a (Z, Y, X) mask, got shape {mask.shape}")
    return _encode_flat(mask.astype(bool, copy=False).reshape(-1))


def decode_rle_3d(rle: Sequence[int], shape: tuple[int, int, int]) -> np.ndarray:
    """Bool mask ``(Z, Y, X)`` from run lengths (inverse of ``encode_rle_3d``)."""
    if len(shape) != 3 or any(int(side) < 0 for side in shape):
        raise ValueError(f"decode_rle_3d needs a (Z, Y, X) shape, got {shape}")
    depth, height, width = (int(side) for side in shape)
    return _decode_flat(rle, depth * height * width).reshape(depth, height, width)
