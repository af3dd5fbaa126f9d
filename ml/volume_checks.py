"""Input validation for the engine: every bad volume, spacing or mask becomes a ``ValueError`` naming it.

The engine runs inside a worker that must survive any request, so anything a caller can get wrong is
checked here, before any model work, with a message that says what was wrong and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FINITE_CHECK_SLAB = 32
"""Slices checked for NaN/inf at a time (keeps the temporary bool array small for large CT volumes)."""


def check_volume(volume: np.ndarray) -> np.ndarray:
    """Validate a raw intensity volume and return it as an ndarray (no copy when already one).

    Args:
        volume: intensities ``(Z, Y, X)``, any real numeric dtype.

    Raises:
        ValueError: not 3D, empty, not real numeric, or containing NaN/inf.
    """
    try:
        array = np.asarray(volume)
    except Exception as error:  # arbitrary objects can fail to convert in many ways
        raise ValueError(f"volume could not be read as an array: {error}") from error
    if array.ndim != 3:
        raise ValueError(f"volume must be 3D (Z, Y, X), got {array.ndim}D with shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"volume is empty: shape {array.shape}")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"volume must hold real numbers, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        for start in range(0, array.shape[0], FINITE_CHECK_SLAB):
            slab = array[start : start + FINITE_CHECK_SLAB]
            if not np.isfinite(slab).all():
                bad_z = start + int(np.flatnonzero(~np.isfinite(slab).all(axis=(1, 2)))[0])
                raise ValueError(f"volume contains NaN or infinite values (first on slice z={bad_z})")
    return array


def check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """Validate ``(sz, sy, sx)`` in mm: three finite values > 0.

    Raises:
        ValueError: wrong length, non-numeric, zero, negative or non-finite values.
    """
    try:
        values = tuple(float(value) for value in spacing)
    except (TypeError, ValueError) as error:
        raise ValueError(f"spacing must be three numbers (sz, sy, sx) in mm, got {spacing!r}") from error
    if len(values) != 3:
        raise ValueError(f"spacing must have 3 values (sz, sy, sx), got {len(values)}: {spacing!r}")
    if not all(np.isfinite(value) and value > 0 for value in values):
        raise ValueError(f"spacing values must be finite and > 0 mm, got {values}")
    return values  # type: ignore[return-value]


def check_slice_index(z: int, depth: int, what: str = "z") -> int:
    """Validate a slice index against a volume of ``depth`` slices.

    Raises:
        ValueError: not an integer or outside ``0..depth-1``.
    """
    index = check_integer(z, what)
    if not 0 <= index < depth:
        raise ValueError(f"{what}={index} lies outside the volume (slices 0..{depth - 1})")
    return index


def check_integer(value: object, what: str) -> int:
    """A voxel coordinate as ``int``: integers, numpy integers and integral finite floats are accepted.

    Raises:
        ValueError: anything else (bools, fractions, NaN, strings).
    """
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{what} must be an integer voxel index, got {value!r}")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and np.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{what} must be an integer voxel index, got {value!r}")


def check_mask_2d(mask: np.ndarray, shape: tuple[int, int], what: str, *, allow_empty: bool) -> np.ndarray:
    """Validate a 2D mask against a slice shape and return it as a new bool ``(Y, X)`` array.

    A copy, so a caller reusing its buffer cannot change a prompt or a streamed step afterwards.

    Raises:
        ValueError: wrong shape or dimensionality, or empty when ``allow_empty`` is False.
    """
    array = np.asarray(mask)
    if array.ndim != 2 or array.shape != tuple(shape):
        raise ValueError(f"{what} must have the slice shape {tuple(shape)} (Y, X), got {array.shape}")
    if array.dtype != bool:
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{what} must be boolean or numeric, got dtype {array.dtype}")
        array = array != 0
    else:
        array = array.copy()
    if not allow_empty and not array.any():
        raise ValueError(f"{what} is empty: it must contain at least one foreground voxel")
    return array


def check_mask_3d(mask: np.ndarray, shape: tuple[int, int, int], what: str = "mask") -> np.ndarray:
    """Validate a 3D mask against the volume shape and return it as bool ``(Z, Y, X)``.

    Raises:
        ValueError: wrong shape or non-numeric dtype.
    """
    array = np.asarray(mask)
    if array.shape != tuple(shape):
        raise ValueError(f"{what} must have the volume shape {tuple(shape)} (Z, Y, X), got {array.shape}")
    if array.dtype != bool:
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{what} must be boolean or numeric, got dtype {array.dtype}")
        array = array != 0
    return array


def check_slice_bounds(z_min: int | None, z_max: int | None, depth: int) -> tuple[int, int]:
    """Optional inclusive boundary slices -> ``(low, high)``, defaulting to the volume's ends.

    Raises:
        ValueError: a bound outside the volume, or ``z_min > z_max``.
    """
    low = 0 if z_min is None else check_slice_index(z_min, depth, "z_min")
    high = depth - 1 if z_max is None else check_slice_index(z_max, depth, "z_max")
    if low > high:
        raise ValueError(f"z_min={low} is above z_max={high}")
    return low, high
