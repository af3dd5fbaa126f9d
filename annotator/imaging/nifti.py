"""NIfTI-1/2 reading into the canonical layout, and writing label maps back onto a source grid.

Canonical = ``data.transpose(2, 1, 0)`` (no flips, no resampling), so export can transpose back and reuse
the source affine byte-for-byte. ``source_meta`` keys for a NIfTI volume:
``affine`` (the source 4x4 as nested lists, the sform/qform nibabel picked), ``shape`` (the file's full
shape, native order), ``dtype``, ``sform_code``, ``qform_code``, ``pixdim``, ``xyzt_units``, ``descrip``,
``nifti_version``, ``file_name``.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .common import check_finite, check_spatial_shape, check_volume_size, guess_modality_without_header
from .geometry import canonical_affine_to_ijk, ijk_affine_to_canonical, spacing_from_affine
from .storage import to_storage_dtype
from .types import ImportLimits, LoadedVolume, VolumeImportError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# nnU-Net names images <case>_0000.nii.gz; the case is the part before the channel suffix.
_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")


def looks_like_nifti(path: Path) -> bool:
    """True for ``.nii``/``.nii.gz`` names or a NIfTI-1/2 header (``sizeof_hdr`` 348 or 540)."""
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(2)
            handle.seek(0)
            if head == b"\x1f\x8b":
                with gzip.open(handle) as inner:
                    header = inner.read(4)
            else:
                header = handle.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    if len(header) < 4:
        return False
    return any(int.from_bytes(header, order) in (348, 540) for order in ("little", "big"))


def case_name_from_file(file_name: str) -> str:
    """``hippocampus_001_0000.nii.gz`` -> ``hippocampus_001``; ``scan.nrrd`` -> ``scan``."""
    lowered = file_name.lower()
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr"):
        if lowered.endswith(suffix):
            file_name = file_name[: -len(suffix)]
            break
    return _CHANNEL_SUFFIX.sub("", file_name) or file_name


def _json_float_list(values: np.ndarray) -> list[Any]:
    return np.asarray(values, dtype=np.float64).tolist()


def load_nifti_image(path: Path, display_name: str) -> nib.Nifti1Image | nib.Nifti2Image:
    """Open a NIfTI lazily (header only); VolumeImportError("corrupt_file") when it is not readable."""
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for malformed headers
        raise VolumeImportError(f"{display_name} could not be read as NIfTI: {exc}", "corrupt_file") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise VolumeImportError(
            f"{display_name} is a {type(image).__name__}, not a NIfTI image.", "not_an_image"
        )
    return image


def read_nifti_data(image: nib.Nifti1Image | nib.Nifti2Image, display_name: str) -> np.ndarray:
    """Decode the voxels (scl_slope/scl_inter applied by nibabel); corrupt_file on truncation."""
    try:
        return np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise VolumeImportError(
            f"{display_name} is truncated or corrupt (the voxel data could not be read: {exc}).",
            "corrupt_file",
        ) from None


def read_nifti(path: Path, display_name: str, limits: ImportLimits) -> LoadedVolume:
    """Read a 3D NIfTI into ``LoadedVolume`` (array ``(Z, Y, X)`` = data ``(i, j, k)`` transposed).

    Raises VolumeImportError: ``four_d`` (a 4th axis > 1), ``single_2d_image``, ``too_large``,
    ``non_finite``, ``corrupt_file`` / ``not_an_image``.
    """
    image = load_nifti_image(path, display_name)
    header = image.header
    full_shape = tuple(int(side) for side in image.shape)
    dtype = header.get_data_dtype()
    if dtype.fields is not None:
        raise VolumeImportError(
            f"{display_name} stores RGB/compound voxels ({dtype}); only scalar images can be imported.",
            "four_d",
        )
    spatial_shape = check_spatial_shape(full_shape, display_name)
    check_volume_size(spatial_shape, max(dtype.itemsize, 4), limits, display_name)
    data = read_nifti_data(image, display_name).reshape(spatial_shape)
    check_finite(data, display_name)
    affine_ijk = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine_ijk)) or abs(np.linalg.det(affine_ijk[:3, :3])) < 1e-12:
        raise VolumeImportError(f"{display_name} has a degenerate or non-finite affine.", "corrupt_file")
    array = to_storage_dtype(data.transpose(2, 1, 0))
    affine = ijk_affine_to_canonical(affine_ijk)
    modality, modality_warning = guess_modality_without_header(array)
    sform_code = int(header["sform_code"]) if "sform_code" in header else 0
    qform_code = int(header["qform_code"]) if "qform_code" in header else 0
    source_meta: dict[str, Any] = {
        "file_name": display_name,
        "affine": _json_float_list(affine_ijk),
        "shape": list(full_shape),
        "dtype": str(dtype),
        "sform_code": sform_code,
        "qform_code": qform_code,
        "pixdim": _json_float_list(header["pixdim"]),
        "xyzt_units": int(header["xyzt_units"]),
        "descrip": header["descrip"].tobytes().split(b"\0")[0].decode("latin-1"),
        "nifti_version": 2 if isinstance(image, nib.Nifti2Image) else 1,
    }
    warnings = [modality_warning] if modality_warning else []
    if sform_code == 0 and qform_code == 0:
        warnings.append("The NIfTI has neither sform nor qform: geometry taken from pixdim only.")
    return LoadedVolume(
        array=array,
        spacing=spacing_from_affine(affine),
        affine=affine,
        modality=modality,
        name=case_name_from_file(display_name),
        source_format="nifti",
        source_meta=source_meta,
        warnings=warnings,
    )


def write_label_nifti(
    label: np.ndarray, volume_affine: np.ndarray, source_meta: dict[str, Any], path: Path
) -> None:
    """Write a label map as ``.nii``/``.nii.gz`` on the volume's SOURCE grid.

    Arguments:
        label: uint8 ``(Z, Y, X)`` on the canonical grid of the volume.
        volume_affine: the volume's canonical affine ``(z, y, x, 1) -> RAS``.
        source_meta: the volume's ``LoadedVolume.source_meta``. A NIfTI source (``"affine"`` and ``"shape"``
            present, ``nifti_version`` set) gets the data transposed back to ``(i, j, k)`` and the source
            affine reused exactly, with its sform/qform codes; DICOM and NRRD sources get ``(X, Y, Z)`` data
            with the affine built from the canonical geometry (i = column, j = row, k = slice).
        path: destination; ``.nii.gz`` compresses.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label must be (Z, Y, X), got shape {label.shape}")
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError("label values must fit uint8")
        label = label.astype(np.uint8)
    data_ijk = np.ascontiguousarray(label.transpose(2, 1, 0))
    if "nifti_version" in source_meta and "affine" in source_meta:
        affine_ijk = np.asarray(source_meta["affine"], dtype=np.float64)
        source_shape = tuple(int(side) for side in source_meta["shape"][:3])
        if data_ijk.shape != source_shape:
            raise ValueError(
                f"label (X, Y, Z) {data_ijk.shape} does not match the source shape {source_shape}"
            )
        sform_code = int(source_meta.get("sform_code", 1)) or 0
        qform_code = int(source_meta.get("qform_code", 1)) or 0
    else:
        affine_ijk = canonical_affine_to_ijk(np.asarray(volume_affine, dtype=np.float64))
        sform_code = qform_code = 1  # scanner anatomical
    image = nib.Nifti1Image(data_ijk, affine_ijk)
    # Nifti1Image(data, affine) writes the affine into both sform and qform; keep the source's codes so
    # readers pick the same matrix they picked for the image.
    image.set_sform(affine_ijk, code=sform_code if sform_code else 0)
    image.set_qform(affine_ijk, code=qform_code if qform_code else 0)
    if not sform_code and not qform_code:
        image.set_sform(affine_ijk, code=1)
    image.header.set_data_dtype(np.uint8)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))
