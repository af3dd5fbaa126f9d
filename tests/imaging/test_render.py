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
