"""Windowed slice thumbnails as PNG (Pillow).

Display conventions (the server does not reorient by the affine; the viewer does):
* ``axial``: ``volume[index]`` shown as stored, row ``y = 0`` at the top, column ``x = 0`` on the left. For
  DICOM-sourced volumes (rows run anterior -> posterior, columns patient right -> left) this is the
  radiological view: the patient's right on the viewer's left, anterior at the top.
* ``coronal``: ``volume[:, index, :]`` as a ``(Z, X)`` image, ``z`` flipped so the highest slice index is at
  the top (superior at the top for the usual z-ascending-to-head order), ``x`` as in the axial view.
* ``sagittal``: ``volume[:, :, index]`` as a ``(Z, Y)`` image, highest ``z`` at the top, ``y`` left to right.
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


def extract_plane(
    volume: np.ndarray, axis: Axis, index: int
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The display-oriented 2D plane and which spacing axes its (rows, columns) follow (see module doc)."""
    if axis not in _AXIS_INDEX:
        raise ValueError(f"axis must be axial, coronal or sagittal, got {axis!r}")
    axis_number = _AXIS_INDEX[axis]
    if not 0 <= index < volume.shape[axis_number]:
        raise IndexError(f"{axis} index {index} outside 0..{volume.shape[axis_number] - 1}")
    if axis == "axial":
        return volume[index], None
    if axis == "coronal":
        return volume[::-1, index, :], None
    return volume[::-1, :, index], None


def render_slice_png(
    volume: np.ndarray,
    axis: Axis,
    index: int,
    window: float,
    level: float,
    spacing: tuple[float, float, float] | None = None,
    max_size: int | None = 512,
) -> bytes:
    """Render one slice of a ``(Z, Y, X)`` volume as a greyscale PNG.

    Arguments:
        volume: ``(Z, Y, X)`` intensities (HU for CT).
        axis: ``"axial"`` (plane ``(Y, X)``), ``"coronal"`` (``(Z, X)``) or ``"sagittal"`` (``(Z, Y)``).
        index: slice index along that axis.
        window, level: display window width and centre in intensity units.
        spacing: ``(sz, sy, sx)`` mm; when given, pixels are resampled to square physical pixels.
        max_size: longest side of the PNG in pixels (downscale only); None keeps the native size.
    Returns:
        PNG bytes (mode ``L``).
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be (Z, Y, X), got shape {volume.shape}")
    plane, _ = extract_plane(volume, axis, index)
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
