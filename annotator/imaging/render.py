"""Windowed slice thumbnails as PNG (Pillow).

Display conventions. With the volume's ``affine`` (``(z, y, x, 1) -> RAS+`` mm) every plane is shown the way
radiologists read it, whatever the storage order (RAS NIfTI, LPS DICOM, flipped axes):
* ``axial`` (``volume[index]``, rows ``y``, columns ``x``): anterior at the top, the patient's right on the
  viewer's left.
* ``coronal`` (``volume[:, index, :]``, rows ``z``, columns ``x``): superior at the top, the patient's right on
  the viewer's left.
* ``sagittal`` (``volume[:, :, index]``, rows ``z``, columns ``y``): superior at the top, anterior on the left.
Each in-plane index axis is flipped when its direction's dominant world component points the other way;
axes are never swapped (an oblique or permuted acquisition keeps its own plane, only its sense is fixed).
Without an affine, rows and columns follow the array (``z`` flipped in coronal and sagittal planes so the
highest slice is at the top), which is the radiological view for the usual DICOM order.
Grey value: ``clip((v - (level - window / 2)) / window, 0, 1) * 255``, so a bone window (W 2000 / L 500)
shows bone white and soft tissue dark grey, a soft-tissue window (W 400 / L 40) shows organs mid grey and
bone saturated white, air black in both. Non-axial planes are stretched by their spacing so anatomy keeps
its true aspect ratio; the longer side is at most ``max_size`` pixels (never upscaled beyond that).
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image

Axis = Literal["axial", "coronal", "sagittal"]
_AXIS_INDEX: dict[str, int] = {"axial": 0, "coronal": 1, "sagittal": 2}


def window_to_uint8(plane: np.ndarray, window: float, level: float) -> np.ndarray:
    """Map intensities to grey ``uint8`` with the radiological window/level convention."""
    if not window > 0:
        raise ValueError(f"window must be > 0, got {window}")
    low = level - window / 2.0
    scaled = (plane.astype(np.float32) - np.float32(low)) / np.float32(window)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# Per plane: (canonical axis shown as rows, canonical axis shown as columns) and, for each, the RAS world
# axis (0 = R, 1 = A, 2 = S) and the sign that must DEcrease along the screen (top -> bottom, left -> right).
# Rows: anterior (axial) or superior (coronal, sagittal) first; columns: patient right (axial, coronal) or
# anterior (sagittal) first.
_PLANE_LAYOUT: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "axial": ((1, 1), (2, 0)),
    "coronal": ((0, 2), (2, 0)),
    "sagittal": ((0, 2), (1, 1)),
}


def display_flips(axis: Axis, affine: np.ndarray | None) -> tuple[bool, bool]:
    """Whether the plane's rows and columns must be reversed for the radiological view (see module doc).

    Arguments:
        axis: the plane.
        affine: 4x4 ``(z, y, x, 1) -> RAS+`` mm, or None for the array's own order (z reversed in
            coronal and sagittal planes).
    """
    if affine is None:
        return axis != "axial", False
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {matrix.shape}")
    flips = []
    for canonical_axis, world_axis in _PLANE_LAYOUT[axis]:
        direction = matrix[:3, canonical_axis]
        # The screen runs from the "first" world direction (anterior, superior, patient right) to the other:
        # an index axis whose step increases that world coordinate must be reversed. Only the dominant
        # component decides, so oblique axes keep a stable sense.
        dominant = int(np.argmax(np.abs(direction)))
        flips.append(dominant == world_axis and direction[world_axis] > 0)
    return flips[0], flips[1]


def extract_plane(
    volume: np.ndarray, axis: Axis, index: int, affine: np.ndarray | None = None
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The display-oriented 2D plane and which spacing axes its (rows, columns) follow (see module doc)."""
    if axis not in _AXIS_INDEX:
        raise ValueError(f"axis must be axial, coronal or sagittal, got {axis!r}")
    axis_number = _AXIS_INDEX[axis]
    if not 0 <= index < volume.shape[axis_number]:
        raise IndexError(f"{axis} index {index} outside 0..{volume.shape[axis_number] - 1}")
    if axis == "axial":
        plane = volume[index]
    elif axis == "coronal":
        plane = volume[:, index, :]
    else:
        plane = volume[:, :, index]
    flip_rows, flip_columns = display_flips(axis, affine)
    if flip_rows:
        plane = plane[::-1, :]
    if flip_columns:
        plane = plane[:, ::-1]
    return plane, None


def render_slice_png(
    volume: np.ndarray,
    axis: Axis,
    index: int,
    window: float,
    level: float,
    spacing: tuple[float, float, float] | None = None,
    max_size: int | None = 512,
    affine: np.ndarray | None = None,
) -> bytes:
    """Render one slice of a ``(Z, Y, X)`` volume as a greyscale PNG.

    Arguments:
        volume: ``(Z, Y, X)`` intensities (HU for CT).
        axis: ``"axial"`` (plane ``(Y, X)``), ``"coronal"`` (``(Z, X)``) or ``"sagittal"`` (``(Z, Y)``).
        index: slice index along that axis.
        window, level: display window width and centre in intensity units.
        spacing: ``(sz, sy, sx)`` mm; when given, pixels are resampled to square physical pixels.
        max_size: longest side of the PNG in pixels (downscale only); None keeps the native size.
        affine: 4x4 ``(z, y, x, 1) -> RAS+`` mm; when given, the plane is shown radiologically (module doc).
    Returns:
        PNG bytes (mode ``L``).
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be (Z, Y, X), got shape {volume.shape}")
    plane, _ = extract_plane(volume, axis, index, affine)
    grey = window_to_uint8(plane, window, level)
    height_px, width_px = grey.shape
    # Physical size of the plane (mm) decides the output aspect ratio.
    if spacing is not None:
        sz, sy, sx = (float(value) for value in spacing)
        row_mm, column_mm = {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[axis]
    else:
        row_mm = column_mm = 1.0
    physical_height, physical_width = height_px * row_mm, width_px * column_mm
    # Keep the native resolution along the finer axis, stretch the coarser one.
    pixel_mm = min(row_mm, column_mm)
    out_height, out_width = physical_height / pixel_mm, physical_width / pixel_mm
    if max_size is not None and max(out_height, out_width) > max_size:
        scale = max_size / max(out_height, out_width)
        out_height, out_width = out_height * scale, out_width * scale
    size = (max(1, round(out_width)), max(1, round(out_height)))
    image = Image.fromarray(np.ascontiguousarray(grey))  # uint8 2D -> mode "L"
    if size != (width_px, height_px):
        image = image.resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
