"""Builders for the export tests: synthetic cases on known geometry, real DICOM series as cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from annotator.exporting import ExportCase, LabelSpec

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def rotated_flipped_ijk_affine() -> np.ndarray:
    """A NIfTI ``(i, j, k)`` affine with a 30 degree rotation, flipped i and k, anisotropic spacing.

    Entries are float32-representable, as they are in any affine read from a NIfTI header.
    """
    angle = np.deg2rad(30.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    linear = rotation @ np.diag([-0.8, 1.25, -2.5])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = [12.5, -40.25, 33.0]
    return affine.astype(np.float32).astype(np.float64)


def nifti_source_case(
    case_id: str, shape_zyx: tuple[int, int, int], seed: int, label_values: list[int]
) -> ExportCase:
    """A case as the NIfTI importer produces it: canonical = data.transpose(2, 1, 0), source affine kept."""
    rng = np.random.default_rng(seed)
    image = rng.integers(-1000, 1500, size=shape_zyx, dtype=np.int16)
    label = np.zeros(shape_zyx, dtype=np.uint8)
    z_size, y_size, x_size = shape_zyx
    for index, value in enumerate(label_values):
        # Asymmetric blocks so any transpose or flip mistake changes the voxels.
        label[index : z_size - 1, 1 + index : y_size // 2 + index, 2 * index : x_size - 3] = value
    affine_ijk = rotated_flipped_ijk_affine()
    return ExportCase(
        case_id=case_id,
        image=image,
        label=label,
        affine=affine_ijk[:, [2, 1, 0, 3]].copy(),
        source_format="nifti",
        source_meta={
            "affine": affine_ijk.tolist(),
            "shape": [x_size, y_size, z_size],
            "sform_code": 2,
            "qform_code": 1,
        },
    )


def dicom_source_case(
    case_id: str, shape_zyx: tuple[int, int, int], seed: int, label_values: list[int]
) -> ExportCase:
    """A case with DICOM-style geometry: oblique image orientation, LPS positions converted to RAS."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 100.0, size=shape_zyx).astype(np.float32)
    label = np.zeros(shape_zyx, dtype=np.uint8)
    for index, value in enumerate(label_values):
        label[1:, index : index + 3, 1 + index :] = value
    row_cosine = np.array([1.0, 0.0, 0.0])
    column_cosine = np.array([0.0, np.cos(0.2), -np.sin(0.2)])
    normal = np.cross(row_cosine, column_cosine)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = normal * 3.0
    affine_lps[:3, 1] = column_cosine * 0.7
    affine_lps[:3, 2] = row_cosine * 0.7
    affine_lps[:3, 3] = [-120.0, -95.5, 410.0]
    return ExportCase(
        case_id=case_id,
        image=image,
        label=label,
        affine=LPS_TO_RAS @ affine_lps,
        source_format="dicom",
        source_meta={"sop_instance_uids": [pydicom.uid.generate_uid() for _ in range(shape_zyx[0])]},
    )


def read_dicom_series_as_case(files: list[Path], case_id: str) -> ExportCase:
    """Canonical geometry of a real DICOM series built independently of the importer.

    Slices are sorted along the normal (row cosine x column cosine) by ImagePositionPatient; Y = rows,
    X = columns; the affine maps ``(z, y, x)`` to RAS. The image holds zeros (the SEG writer needs no pixels).
    """
    datasets = [pydicom.dcmread(str(path), stop_before_pixels=True) for path in files]
    orientation = np.asarray([float(value) for value in datasets[0].ImageOrientationPatient])
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    normal = np.cross(row_cosine, column_cosine)
    order = sorted(
        range(len(datasets)), key=lambda index: float(np.dot(normal, datasets[index].ImagePositionPatient))
    )
    ordered = [datasets[index] for index in order]
    positions = np.asarray([[float(value) for value in ds.ImagePositionPatient] for ds in ordered])
    slice_step = float(np.dot(normal, positions[-1] - positions[0]) / (len(ordered) - 1))
    row_spacing, column_spacing = (float(value) for value in ordered[0].PixelSpacing)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = normal * slice_step
    affine_lps[:3, 1] = column_cosine * row_spacing
    affine_lps[:3, 2] = row_cosine * column_spacing
    affine_lps[:3, 3] = positions[0]
    shape = (len(ordered), int(ordered[0].Rows), int(ordered[0].Columns))
    return ExportCase(
        case_id=case_id,
        image=np.zeros(shape, dtype=np.int16),
        label=np.zeros(shape, dtype=np.uint8),
        affine=LPS_TO_RAS @ affine_lps,
        source_format="dicom",
        source_meta={
            "study_instance_uid": str(ordered[0].get("StudyInstanceUID", "")),
            "series_instance_uid": str(ordered[0].get("SeriesInstanceUID", "")),
            "frame_of_reference_uid": str(ordered[0].get("FrameOfReferenceUID", "")),
            "sop_instance_uids": [
                str(ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID) for ds in ordered
            ],
            "source_files": [str(files[index]) for index in order],
        },
    )


PROJECT_LABELS = [
    LabelSpec(value=2, name="liver", color="#a0522d"),
    LabelSpec(value=5, name="spine", color="#f0e68c"),
    LabelSpec(value=7, name="unused class", color="#00ff00"),
]
