"""Writing canonical ``(Z, Y, X)`` volumes as NIfTI files on the case's ORIGINAL source grid.

The canonical array is ``data_ijk.transpose(2, 1, 0)`` for every source format (NIfTI and NRRD by the import
contract; for DICOM, ``i`` = column, ``j`` = row, ``k`` = slice), so export writes
``canonical.transpose(2, 1, 0)`` with the ``(i, j, k)`` affine:

* NIfTI source: ``source_meta["affine"]`` exactly as the importer read it (float64 of the header's matrix),
  with the source's sform/qform codes, after checking it agrees with the canonical affine;
* NRRD source: ``source_meta["affine_ras_ijk"]`` (already RAS), checked the same way;
* DICOM source (or a source_meta without a usable affine): the canonical affine with its first three
  columns reversed, sform and qform code 1 (scanner anatomical).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .types import ExportCase, ExportError, LabelSpec, validate_case, validate_label_specs

# Largest difference (mm, per matrix entry) tolerated between the stored source affine and the one implied
# by the canonical affine before export refuses to write a possibly misaligned file.
AFFINE_AGREEMENT_TOLERANCE_MM = 1e-3
_NIFTI_CODE_SCANNER_ANATOMICAL = 1


@dataclass(frozen=True)
class SourceGrid:
    """Where a case's voxels go in the written NIfTI.

    Attributes:
        affine_ijk: 4x4 float64, ``(i, j, k, 1)`` -> RAS mm, with ``(i, j, k) = (x, y, z)`` of the canonical
            index.
        shape_ijk: ``(X, Y, Z)``, the shape of the written array.
        sform_code: NIfTI sform code to write (>= 1).
        qform_code: NIfTI qform code to write (>= 1).
    """

    affine_ijk: np.ndarray
    shape_ijk: tuple[int, int, int]
    sform_code: int
    qform_code: int


def canonical_to_ijk_affine(affine_zyx: np.ndarray) -> np.ndarray:
    """The ``(i, j, k)`` affine of ``canonical.transpose(2, 1, 0)``: the first three columns reversed."""
    return np.asarray(affine_zyx, dtype=np.float64)[:, [2, 1, 0, 3]].copy()


def _stored_source_affine(case: ExportCase) -> np.ndarray | None:
    """The ``(i, j, k)`` affine the importer kept for NIfTI/NRRD sources, or None (DICOM, missing keys)."""
    meta: dict[str, Any] = case.source_meta or {}
    key = {"nifti": "affine", "nrrd": "affine_ras_ijk"}.get(case.source_format)
    if key is None or meta.get(key) is None:
        return None
    try:
        affine = np.asarray(meta[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise ExportError(f"Case {case.case_id!r}: source_meta[{key!r}] is not a 4x4 matrix.") from None
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ExportError(f"Case {case.case_id!r}: source_meta[{key!r}] is not a finite 4x4 matrix.")
    return affine


def source_grid(case: ExportCase) -> SourceGrid:
    """Resolve the source grid of ``case`` (see the module docstring for the rule per format).

    Raises:
        ExportError: the stored source affine disagrees with the canonical affine (a broken transpose
            contract would otherwise misalign every exported voxel), or the stored source shape is not the
            transposed canonical shape.
    """
    z_size, y_size, x_size = (int(side) for side in np.shape(case.image))
    shape_ijk = (x_size, y_size, z_size)
    implied = canonical_to_ijk_affine(case.affine)
    stored = _stored_source_affine(case)
    meta = case.source_meta or {}
    if stored is None:
        return SourceGrid(implied, shape_ijk, _NIFTI_CODE_SCANNER_ANATOMICAL, _NIFTI_CODE_SCANNER_ANATOMICAL)
    if not np.allclose(stored, implied, rtol=0.0, atol=AFFINE_AGREEMENT_TOLERANCE_MM):
        raise ExportError(
            f"Case {case.case_id!r}: the stored source affine does not match the case's canonical affine "
            "(expected the canonical affine with its first three columns reversed); refusing to export a "
            "possibly misaligned volume."
        )
    stored_shape = meta.get("shape")
    if stored_shape is not None:
        spatial = tuple(int(side) for side in stored_shape[:3])
        extra = [int(side) for side in stored_shape[3:]]
        if spatial != shape_ijk or any(side != 1 for side in extra):
            raise ExportError(
                f"Case {case.case_id!r}: the source shape {tuple(stored_shape)} does not match the canonical "
                f"shape (Z, Y, X) = {(z_size, y_size, x_size)} transposed."
            )
    sform_code = int(meta.get("sform_code", 0) or 0)
    qform_code = int(meta.get("qform_code", 0) or 0)
    # Always write an sform so every reader lands on the stored matrix; keep the source's codes where set.
    sform_code = sform_code or qform_code or _NIFTI_CODE_SCANNER_ANATOMICAL
    qform_code = qform_code or sform_code
    return SourceGrid(stored, shape_ijk, sform_code, qform_code)


def _nifti_safe(volume: np.ndarray) -> np.ndarray:
    """Voxels in a dtype every NIfTI reader handles: bool -> uint8, float16 -> float32, 64-bit ints -> int32."""
    if volume.dtype == np.bool_:
        return volume.astype(np.uint8)
    if volume.dtype == np.float16:
        return volume.astype(np.float32)
    if volume.dtype.kind in "iu" and volume.dtype.itemsize == 8:
        info = np.iinfo(np.int32)
        if volume.size == 0 or (volume.min() >= info.min and volume.max() <= info.max):
            return volume.astype(np.int32)
        return volume.astype(np.float64)
    if volume.dtype.kind == "u" and volume.dtype.itemsize == 4:
        return volume.astype(np.float64) if volume.size and volume.max() > np.iinfo(np.int32).max else volume
    return volume


def write_volume_on_source_grid(volume_zyx: np.ndarray, grid: SourceGrid, path: Path) -> None:
    """Write a canonical ``(Z, Y, X)`` volume as a NIfTI-1 file on ``grid`` (``.nii.gz`` compresses).

    The data written is ``volume_zyx.transpose(2, 1, 0)`` (``(X, Y, Z)`` = ``(i, j, k)``) in its own dtype
    (no scaling: scl_slope stays unset); sform and qform both hold ``grid.affine_ijk``; units mm.
    """
    data_ijk = np.ascontiguousarray(_nifti_safe(np.asarray(volume_zyx)).transpose(2, 1, 0))
    if data_ijk.shape != grid.shape_ijk:
        raise ExportError(
            f"Volume (X, Y, Z) {data_ijk.shape} does not match the source grid {grid.shape_ijk}."
        )
    image = nib.Nifti1Image(data_ijk, grid.affine_ijk)
    image.header.set_data_dtype(data_ijk.dtype)
    image.set_sform(grid.affine_ijk, code=grid.sform_code)
    image.set_qform(grid.affine_ijk, code=grid.qform_code)
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def write_case_label_nifti(case: ExportCase, path: Path, labels: list[LabelSpec] | None = None) -> None:
    """Write the case's label map (project values, uint8) as NIfTI on the case's source grid.

    Arguments:
        case: the case; ``case.label`` is uint8 ``(Z, Y, X)``.
        path: destination file (``.nii`` or ``.nii.gz``); parent folders are created.
        labels: when given, label values outside these classes raise ExportError; otherwise any uint8
            value is accepted.

    The image of the case is not written; the label file has the source's shape ``(X, Y, Z)`` and affine.
    """
    allowed = (
        [spec.value for spec in validate_label_specs(labels)] if labels is not None else list(range(1, 256))
    )
    label = validate_case(case, allowed)
    write_volume_on_source_grid(label, source_grid(case), Path(path))
