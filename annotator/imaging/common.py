"""Checks shared by the NIfTI, NRRD and DICOM readers."""

from __future__ import annotations

import numpy as np

from .types import ImportLimits, VolumeImportError

KNOWN_MODALITIES = ("CT", "MR", "PT")


def check_volume_size(shape: tuple[int, ...], itemsize: int, limits: ImportLimits, name: str) -> None:
    """Refuse a volume that would exceed the voxel or decoded-byte limits, before decoding it."""
    voxels = int(np.prod(np.asarray(shape, dtype=np.int64)))
    if voxels > limits.max_voxels:
        raise VolumeImportError(
            f"{name}: {voxels:,} voxels ({' x '.join(map(str, shape))}) exceed the limit of "
            f"{limits.max_voxels:,} voxels per volume.",
            "too_large",
        )
    if voxels * itemsize > limits.max_uncompressed_bytes:
        raise VolumeImportError(
            f"{name}: the decoded image would take {voxels * itemsize / 1024**3:.1f} GiB, over the limit of "
            f"{limits.max_uncompressed_bytes / 1024**3:.1f} GiB.",
            "too_large",
        )


def check_spatial_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """Accept exactly three spatial axes (trailing singleton axes allowed); refuse 2D and 4D images.

    Returns the 3D shape in the file's native axis order.
    """
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise VolumeImportError(
            f"{name} is a {len(dims)}D image ({' x '.join(map(str, shape))}); only single 3D volumes can be "
            "imported. Split time points / channels into separate 3D files.",
            "four_d",
        )
    if len(dims) < 3 or min(dims) <= 1:
        raise VolumeImportError(
            f"{name} is a single 2D image ({' x '.join(map(str, shape))}); a case needs a 3D volume "
            "with several slices.",
            "single_2d_image",
        )
    return (int(dims[0]), int(dims[1]), int(dims[2]))


def check_finite(array: np.ndarray, name: str) -> None:
    """Refuse NaN/inf voxels: windowing, statistics and the model all break on them."""
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise VolumeImportError(
                f"{name} contains {bad:,} NaN or infinite voxel values; fix the image (e.g. replace them "
                "with the background value) and upload it again.",
                "non_finite",
            )


def guess_modality_without_header(array: np.ndarray) -> tuple[str, str | None]:
    """NIfTI/NRRD carry no modality: call integer images with air at about -1000 "CT", the rest "OT".

    Returns ``(modality, warning)``; the warning tells the user the modality was inferred.
    """
    if array.size and np.issubdtype(array.dtype, np.integer) and array.min() <= -500 and array.max() >= 100:
        return "CT", "Modality not stored in the file: guessed CT from Hounsfield-like intensities."
    return "OT", "Modality not stored in the file: set to OT (other)."
