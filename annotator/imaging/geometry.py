"""Affine helpers for the canonical ``(Z, Y, X)`` geometry contract.

Canonical affine: 4x4, maps the index column vector ``(z, y, x, 1)`` to world RAS+ mm. Readers whose native
index order is ``(i, j, k)`` with ``k`` the slice axis (NIfTI, NRRD) use ``canonical = data.transpose(2, 1, 0)``,
so their canonical affine is the native affine with its first three columns reversed.
"""

from __future__ import annotations

import numpy as np

# World RAS <-> LPS: negate the first two world coordinates (an involution, so one matrix serves both ways).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ijk_affine_to_canonical(affine_ijk: np.ndarray) -> np.ndarray:
    """Affine of an ``(i, j, k)`` array -> affine of its ``transpose(2, 1, 0)`` (index ``(z, y, x) = (k, j, i)``)."""
    affine = np.asarray(affine_ijk, dtype=np.float64)
    return affine[:, [2, 1, 0, 3]].copy()


def canonical_affine_to_ijk(affine_zyx: np.ndarray) -> np.ndarray:
    """Inverse of ``ijk_affine_to_canonical`` (reversing three columns is its own inverse)."""
    return ijk_affine_to_canonical(affine_zyx)


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along each index axis, in the affine's column order (``(sz, sy, sx)`` for a canonical one)."""
    lengths = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return (float(lengths[0]), float(lengths[1]), float(lengths[2]))


def index_to_world(affine: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """World points ``(N, 3)`` of index points ``(N, 3)`` (index order = the affine's column order)."""
    indices = np.asarray(indices, dtype=np.float64)
    return indices @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def grid_corners(shape: tuple[int, ...]) -> np.ndarray:
    """The 8 corner voxel indices ``(8, 3)`` of a 3D grid of ``shape``."""
    last = np.array(shape[:3], dtype=np.float64) - 1.0
    return np.array([[a, b, c] for a in (0.0, last[0]) for b in (0.0, last[1]) for c in (0.0, last[2])])


def signed_axis_mapping(
    source_affine: np.ndarray,
    source_shape: tuple[int, int, int],
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    tolerance_voxels: float = 0.1,
) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]] | None:
    """How to reorder a source grid so it becomes the target grid, if the two grids hold the same points.

    Both affines map index -> world in the same world space. The grids are "the same" when every target
    voxel centre coincides (within ``tolerance_voxels`` of a source voxel, checked at all 8 corners) with a
    source voxel centre and both grids cover the same box, i.e. the source differs only by an axis
    permutation and flips.

    Returns:
        ``(axes, flips)`` such that ``np.flip(source.transpose(axes), [j for j in range(3) if flips[j]])``
        is the source array on the target grid, or None when the grids differ (another spacing, origin,
        extent or a rotation that is not a multiple of 90 degrees).
    """
    target_to_source = np.linalg.inv(np.asarray(source_affine, dtype=np.float64)) @ np.asarray(
        target_affine, dtype=np.float64
    )
    linear = target_to_source[:3, :3]
    axes: list[int] = []
    flips: list[bool] = []
    for target_axis in range(3):
        column = linear[:, target_axis]
        source_axis = int(np.argmax(np.abs(column)))
        axes.append(source_axis)
        flips.append(bool(column[source_axis] < 0))
    if sorted(axes) != [0, 1, 2]:
        return None
    for target_axis, source_axis in enumerate(axes):
        if source_shape[source_axis] != target_shape[target_axis]:
            return None
    # The exact signed permutation the grids should be related by, including the flip offsets.
    expected = np.zeros((4, 4))
    expected[3, 3] = 1.0
    for target_axis, source_axis in enumerate(axes):
        sign = -1.0 if flips[target_axis] else 1.0
        expected[source_axis, target_axis] = sign
        if flips[target_axis]:
            expected[source_axis, 3] = source_shape[source_axis] - 1
    corners = np.hstack([grid_corners(target_shape), np.ones((8, 1))])
    actual_points = corners @ target_to_source.T
    expected_points = corners @ expected.T
    if np.max(np.abs(actual_points[:, :3] - expected_points[:, :3])) > tolerance_voxels:
        return None
    return (axes[0], axes[1], axes[2]), (flips[0], flips[1], flips[2])


def apply_axis_mapping(
    source: np.ndarray, axes: tuple[int, int, int], flips: tuple[bool, bool, bool]
) -> np.ndarray:
    """Reorder ``source`` with a mapping from ``signed_axis_mapping``; returns a C-contiguous copy."""
    reordered = source.transpose(axes)
    flip_axes = [axis for axis in range(3) if flips[axis]]
    if flip_axes:
        reordered = np.flip(reordered, axis=flip_axes)
    return np.ascontiguousarray(reordered)
