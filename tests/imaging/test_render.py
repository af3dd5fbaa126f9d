"""Slice thumbnails: window/level as a radiologist expects, orientation and physical aspect ratio."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from annotator.imaging import render_slice_png


def _png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image)


@pytest.fixture
def abdomen() -> np.ndarray:
    """(Z, Y, X) HU: air -1000, soft tissue 40 HU body, a 1200 HU cortical bone block."""
    volume = np.full((10, 64, 64), -1000, dtype=np.int16)
    volume[:, 8:56, 8:56] = 40
    volume[:, 40:50, 28:36] = 1200
    return volume


def test_bone_window_shows_bone_white_and_soft_tissue_dark_grey(abdomen):
    pixels = _png(render_slice_png(abdomen, "axial", 5, window=2000, level=500, max_size=None))
    bone, soft, air = pixels[45, 30], pixels[20, 20], pixels[2, 2]
    assert bone > 200 and air == 0
    assert 40 < soft < 110


def test_soft_tissue_window_shows_organs_mid_grey_and_bone_saturated(abdomen):
    pixels = _png(render_slice_png(abdomen, "axial", 5, window=400, level=40, max_size=None))
    assert pixels[45, 30] == 255
    assert pixels[20, 20] == 128
    assert pixels[2, 2] == 0


def test_axial_slice_is_shown_as_stored(abdomen):
    pixels = _png(render_slice_png(abdomen, "axial", 0, window=400, level=40, max_size=None))
    assert pixels.shape == (64, 64)
    assert pixels[45, 30] == 255 and pixels[30, 45] == 128  # not transposed


def test_coronal_and_sagittal_have_the_physical_aspect_ratio_and_head_up():
    volume = np.full((20, 50, 40), -1000, dtype=np.int16)
    volume[-1] = 1000  # top slice (highest z)
    spacing = (5.0, 1.0, 0.5)
    coronal = _png(render_slice_png(volume, "coronal", 10, 400, 40, spacing=spacing, max_size=None))
    # (Z, X) = 20 x 5 mm = 100 mm tall, 40 x 0.5 mm = 20 mm wide, at 0.5 mm pixels
    assert coronal.shape == (200, 40)
    assert coronal[0].min() == 255 and coronal[-1].max() == 0  # highest z at the top
    sagittal = _png(render_slice_png(volume, "sagittal", 5, 400, 40, spacing=spacing, max_size=None))
    assert sagittal.shape == (100, 50)  # 100 mm tall, 50 mm wide at 1 mm pixels
    assert sagittal[0].min() == 255


def test_max_size_bounds_the_longest_side_and_keeps_the_aspect():
    volume = np.zeros((30, 400, 200), dtype=np.int16)
    pixels = _png(render_slice_png(volume, "axial", 0, 400, 40, spacing=(2.0, 1.0, 1.0), max_size=128))
    assert pixels.shape == (128, 64)


def test_out_of_range_index_and_unknown_axis_are_refused(abdomen):
    with pytest.raises(IndexError):
        render_slice_png(abdomen, "axial", 10, 400, 40)
    with pytest.raises(ValueError, match="axis"):
        render_slice_png(abdomen, "oblique", 0, 400, 40)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window"):
        render_slice_png(abdomen, "axial", 0, 0, 40)


def _anatomy_lps() -> np.ndarray:
    """(Z, Y, X) stored LPS-wise (z to the head, y to the back, x to the patient's left): markers
    anterior (front rows), on the patient's right (first columns) and at the head (last slices)."""
    volume = np.full((12, 40, 40), -1000, dtype=np.int16)
    volume[:, 2:6, 18:22] = 1000  # anterior marker (small y = anterior in LPS rows)
    volume[:, 18:22, 2:6] = 500  # patient's right marker (small x = right in LPS columns)
    volume[-2:, 30:34, 30:34] = 300  # a head-end marker, posterior-left
    return volume


LPS_AFFINE = np.array([[0, 0, -1, 0], [0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
"""(z, y, x) -> RAS for LPS storage: x runs to the left (-R), y to the back (-A), z to the head (+S)."""
RAS_AFFINE = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
"""(z, y, x) -> RAS for RAS storage (most NIfTI files): x to the patient's right, y to the front."""


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_ras_and_lps_storage_of_the_same_anatomy_look_the_same(axis):
    lps = _anatomy_lps()
    ras = lps[:, ::-1, ::-1]  # the same patient stored RAS-wise: rows and columns reversed
    index = {"axial": 6, "coronal": 20, "sagittal": 20}[axis]
    other_index = index if axis == "axial" else 39 - index
    from_lps = _png(render_slice_png(lps, axis, index, 2000, 500, max_size=None, affine=LPS_AFFINE))
    from_ras = _png(render_slice_png(ras, axis, other_index, 2000, 500, max_size=None, affine=RAS_AFFINE))
    assert np.array_equal(from_lps, from_ras)


def test_axial_view_has_anterior_at_the_top_and_the_patients_right_on_the_left():
    ras = _anatomy_lps()[:, ::-1, ::-1]
    pixels = _png(render_slice_png(ras, "axial", 6, 2000, 500, max_size=None, affine=RAS_AFFINE))
    # W 2000 / L 500 greys: 1000 HU -> 191 (anterior marker), 500 HU -> 128 (right marker)
    anterior_rows = np.nonzero(pixels[:, 18:22].max(axis=1) > 180)[0]
    right_columns = np.nonzero((pixels[18:22] > 115) & (pixels[18:22] < 140))[1]
    assert anterior_rows.max() < 10  # anterior marker at the top
    assert right_columns.max() < 10  # patient's right marker on the viewer's left


def test_coronal_and_sagittal_views_have_the_head_at_the_top_whatever_the_slice_order():
    lps = _anatomy_lps()
    feet_first = lps[::-1]  # slices stored head to feet: z runs to the feet
    affine = LPS_AFFINE.copy()
    affine[:3, 0] = -affine[:3, 0]
    for axis in ("coronal", "sagittal"):
        pixels = _png(render_slice_png(feet_first, axis, 32, 2000, 500, max_size=None, affine=affine))
        marker_rows = np.nonzero(((pixels > 90) & (pixels < 115)).any(axis=1))[0]  # 300 HU -> 102
        assert marker_rows.size and marker_rows.max() < 2  # head-end marker in the top rows
