"""Generated volumes for the ml engine tests: textured ellipsoids in noise, isotropic and anisotropic.

Nothing here reads shared data; every volume is built from a fixed seed so failures reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy import ndimage


@dataclass(frozen=True)
class GeneratedVolume:
    """``image`` float32 ``(Z, Y, X)``, ``truth`` bool ``(Z, Y, X)``, ``spacing`` ``(sz, sy, sx)`` mm."""

    image: np.ndarray
    truth: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def z_first(self) -> int:
        return int(np.flatnonzero(self.truth.any(axis=(1, 2)))[0])

    @property
    def z_last(self) -> int:
        return int(np.flatnonzero(self.truth.any(axis=(1, 2)))[-1])

    @property
    def largest_slice(self) -> int:
        return int(np.argmax(self.truth.sum(axis=(1, 2))))


def make_ellipsoid_volume(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    radii_mm: tuple[float, float, float],
    *,
    seed: int = 0,
    object_level: float = 120.0,
    background_level: float = 40.0,
    noise: float = 12.0,
) -> GeneratedVolume:
    """A bright textured ellipsoid centred in a smoothly varying, noisy background.

    Args:
        shape: ``(Z, Y, X)`` voxels.
        spacing: ``(sz, sy, sx)`` in mm.
        radii_mm: ellipsoid semi-axes ``(rz, ry, rx)`` in mm.
    """
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(
        *(np.arange(size, dtype=np.float32) * step for size, step in zip(shape, spacing, strict=True)),
        indexing="ij",
    )
    centre = [(size - 1) * step / 2 for size, step in zip(shape, spacing, strict=True)]
    distance = sum(((axis - c) / r) ** 2 for axis, c, r in zip((zz, yy, xx), centre, radii_mm, strict=True))
    truth = distance <= 1.0
    background = background_level + 8.0 * ndimage.gaussian_filter(rng.standard_normal(shape), 4.0) * 6.0
    texture = 10.0 * ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) * 3.0
    image = np.where(truth, object_level + texture, background)
    image = image + noise * rng.standard_normal(shape)
    return GeneratedVolume(image.astype(np.float32), truth, spacing)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Two shared cores: keep torch from spreading over both."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ellipsoid() -> GeneratedVolume:
    """Isotropic 1 mm: 40 slices, the object spans about z 8..31."""
    return make_ellipsoid_volume((40, 56, 56), (1.0, 1.0, 1.0), (12.0, 14.0, 10.0), seed=1)


@pytest.fixture(scope="session")
def anisotropic_ellipsoid() -> GeneratedVolume:
    """3 mm slices, 0.8 mm pixels: 24 slices, the object spans about 9 slices."""
    return make_ellipsoid_volume((24, 64, 64), (3.0, 0.8, 0.8), (14.0, 12.0, 15.0), seed=2)
