"""DICOM series reading: header scan, grouping into series, geometry checks, pixel decoding.

A series becomes a canonical volume: slices sorted by their position along the slice normal
(``n = row_cosine x column_cosine``, ascending), never by file name or InstanceNumber. Y = rows, X = columns.
World geometry comes from ImagePositionPatient / ImageOrientationPatient / PixelSpacing (LPS), converted to
RAS for the affine. Series that cannot be put on a regular grid are refused with a clear reason:
``gantry_tilt`` (slices shifted in-plane as they advance), ``irregular_spacing`` (gaps, missing slices,
variable spacing), ``duplicate_slices`` (several images at one position), ``mixed_series`` (orientation,
size or pixel spacing differ between slices).

``source_meta`` keys for a DICOM volume: ``study_instance_uid``, ``series_instance_uid``,
``frame_of_reference_uid``, ``sop_class_uid``, ``sop_instance_uids`` (one per z, canonical order),
``source_files`` (paths, canonical z order), ``patient_id``, ``patient_name``, ``patient_birth_date``,
``patient_sex``, ``study_date``, ``study_time``, ``study_id``, ``study_description``, ``accession_number``,
``series_description``, ``series_number``, ``modality``, ``manufacturer``, ``image_orientation_patient``,
``image_positions_patient`` (LPS, canonical order), ``pixel_spacing`` (row, column), ``slice_thickness``,
``rescale_slopes``/``rescale_intercepts`` (per z), ``uids_from_file_meta`` (True when SOP Class/Instance
UIDs were empty in the dataset and taken from the file meta header).
"""

from __future__ import annotations

import math
import warnings as python_warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from .common import check_finite, check_volume_size
from .geometry import LPS_TO_RAS, spacing_from_affine
from .storage import to_storage_dtype
from .types import ImportLimits, LoadedVolume, VolumeImportError

# Slices further apart than this (relative to the median step, plus an absolute floor for rounded DS
# values) make the spacing irregular.
_SPACING_RELATIVE_TOLERANCE = 0.01
_SPACING_ABSOLUTE_TOLERANCE_MM = 0.01
# In-plane drift of the slice origins, as a fraction of the smallest pixel, that is still a straight stack.
# Above it the volume is sheared (gantry tilt) and an orthogonal grid would misplace voxels.
_TILT_TOLERANCE_PIXELS = 0.25
_ORIENTATION_TOLERANCE = 1e-4
_PIXEL_SPACING_TOLERANCE = 1e-4

IMAGE_STORAGE_NAMES_REFUSED = {
    # Objects people put next to their images; telling them what it is helps more than "not an image".
    "1.2.840.10008.5.1.4.1.1.66.4": "a DICOM Segmentation (SEG); upload it as the label file of its series",
    "1.2.840.10008.5.1.4.1.1.481.3": "an RT Structure Set (RTSTRUCT); contour import is not supported",
    "1.2.840.10008.1.3.10": "a DICOMDIR index file",
}


@dataclass
class DicomSlice:
    """One single-frame DICOM image file, header only (pixels are read when the series is built)."""

    path: Path
    display_name: str
    dataset: Dataset


def _uid(value: Any) -> str:
    return str(value).strip() if value else ""


def _sop_uids(dataset: Dataset) -> tuple[str, str, bool]:
    """``(sop_class_uid, sop_instance_uid, from_file_meta)``: anonymisers sometimes blank the dataset ones."""
    sop_class = _uid(dataset.get("SOPClassUID"))
    sop_instance = _uid(dataset.get("SOPInstanceUID"))
    meta = getattr(dataset, "file_meta", None)
    from_meta = False
    if meta is not None:
        if not sop_class and meta.get("MediaStorageSOPClassUID"):
            sop_class, from_meta = _uid(meta.MediaStorageSOPClassUID), True
        if not sop_instance and meta.get("MediaStorageSOPInstanceUID"):
            sop_instance, from_meta = _uid(meta.MediaStorageSOPInstanceUID), True
    return sop_class, sop_instance, from_meta


def has_dicom_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom_header(path: Path, display_name: str) -> Dataset:
    """Parse a DICOM file's header (no pixel data); VolumeImportError("corrupt_dicom") when unreadable.

    Files without the ``DICM`` preamble are tried too (old ACR-NEMA style exports) but must then contain
    basic image attributes, so that random binary files are not taken for DICOM.
    """
    preamble = has_dicom_preamble(path)
    try:
        with python_warnings.catch_warnings():
            python_warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(str(path), stop_before_pixels=True, force=not preamble)
    except (
        InvalidDicomError,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        OverflowError,
        NotImplementedError,
    ) as exc:
        if preamble:
            raise VolumeImportError(
                f"{display_name} is a corrupt or truncated DICOM file ({type(exc).__name__}: {exc}).",
                "corrupt_dicom",
            ) from None
        raise VolumeImportError(
            f"{display_name} is not a DICOM, NIfTI or NRRD image.", "not_an_image"
        ) from None
    if not preamble and not ("Rows" in dataset and "SOPClassUID" in dataset):
        raise VolumeImportError(f"{display_name} is not a DICOM, NIfTI or NRRD image.", "not_an_image")
    return dataset


def classify_dicom_header(dataset: Dataset, display_name: str) -> None:
    """Refuse DICOM objects that are not single-frame greyscale images, with a reason a user understands."""
    sop_class, _, _ = _sop_uids(dataset)
    if sop_class in IMAGE_STORAGE_NAMES_REFUSED:
        raise VolumeImportError(
            f"{display_name} is {IMAGE_STORAGE_NAMES_REFUSED[sop_class]}.", "not_an_image"
        )
    if "Rows" not in dataset or "Columns" not in dataset:
        kind = UID(sop_class).name if sop_class else "a DICOM object"
        if "Image Storage" in kind:
            # An image SOP class without image attributes: the file stops before its header ended.
            raise VolumeImportError(
                f"{display_name} is a truncated or corrupt DICOM file ({kind} without its image attributes).",
                "corrupt_dicom",
            )
        raise VolumeImportError(f"{display_name} holds no image ({kind}).", "not_an_image")
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise VolumeImportError(
            f"{display_name} is a colour image ({dataset.get('PhotometricInterpretation', '?')}); "
            "only greyscale CT/MR/PET images can be imported.",
            "unsupported_dicom",
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise VolumeImportError(
            f"{display_name} is a multi-frame (enhanced) DICOM image with {frames} frames; please export the "
            "series as classic single-frame images.",
            "unsupported_dicom",
        )


def series_key(slice_: DicomSlice) -> tuple[str, ...]:
    """Grouping key: the SeriesInstanceUID, or (when an anonymiser blanked it) the folder plus geometry."""
    dataset = slice_.dataset
    series_uid = _uid(dataset.get("SeriesInstanceUID"))
    if series_uid:
        return ("uid", series_uid)
    orientation = tuple(round(float(value), 3) for value in dataset.get("ImageOrientationPatient", []) or [])
    return (
        "no-uid",
        str(slice_.path.parent),
        _uid(dataset.get("FrameOfReferenceUID")),
        str(dataset.get("SeriesNumber", "")),
        str(dataset.get("SeriesDescription", "")),
        str(orientation),
        str(dataset.get("Rows")),
        str(dataset.get("Columns")),
    )


def _float_list(value: Any, length: int) -> np.ndarray | None:
    try:
        array = np.asarray([float(item) for item in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if array.shape != (length,) or not np.all(np.isfinite(array)):
        return None
    return array


@dataclass
class _SliceGeometry:
    position: np.ndarray  # (3,) LPS mm, centre of the first transmitted pixel
    row_cosine: np.ndarray  # (3,) direction of increasing column index (X)
    column_cosine: np.ndarray  # (3,) direction of increasing row index (Y)
    pixel_spacing: np.ndarray  # (2,) (between rows = sy, between columns = sx) mm


def _slice_geometry(slice_: DicomSlice) -> _SliceGeometry:
    dataset = slice_.dataset
    position = _float_list(dataset.get("ImagePositionPatient"), 3)
    orientation = _float_list(dataset.get("ImageOrientationPatient"), 6)
    spacing = _float_list(dataset.get("PixelSpacing"), 2)
    missing = [
        name
        for name, value in (
            ("ImagePositionPatient", position),
            ("ImageOrientationPatient", orientation),
            ("PixelSpacing", spacing),
        )
        if value is None
    ]
    if missing:
        raise VolumeImportError(
            f"{slice_.display_name} lacks {', '.join(missing)}, so its place in 3D space is unknown "
            "(secondary capture or a 2D export?).",
            "missing_geometry",
        )
    assert position is not None and orientation is not None and spacing is not None
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    if (
        np.any(spacing <= 0)
        or abs(np.linalg.norm(row_cosine) - 1) > 1e-2
        or abs(np.linalg.norm(column_cosine) - 1) > 1e-2
        or abs(row_cosine @ column_cosine) > 1e-2
    ):
        raise VolumeImportError(
            f"{slice_.display_name} has an invalid ImageOrientationPatient or PixelSpacing.",
            "missing_geometry",
        )
    return _SliceGeometry(
        position=position,
        row_cosine=row_cosine / np.linalg.norm(row_cosine),
        column_cosine=column_cosine / np.linalg.norm(column_cosine),
        pixel_spacing=spacing,
    )


def describe_series(slices: Sequence[DicomSlice]) -> str:
    """A short user-facing name for a series: description and the folder/file it came from."""
    dataset = slices[0].dataset
    description = str(dataset.get("SeriesDescription", "") or "").strip()
    first_name = slices[0].display_name
    label = f"series '{description}'" if description else "series"
    where = f"in {first_name.rsplit('/', 1)[0]}" if "/" in first_name else f"e.g. {first_name}"
    return f"DICOM {label} ({len(slices)} file{'s' if len(slices) != 1 else ''}, {where})"


def _modality(dataset: Dataset) -> str:
    modality = str(dataset.get("Modality", "") or "").upper()
    return modality if modality in ("CT", "MR", "PT") else "OT"


def _sorted_geometry(
    slices: Sequence[DicomSlice], series_name: str
) -> tuple[list[DicomSlice], np.ndarray, _SliceGeometry, float]:
    """Check a series' geometry and sort it along the slice normal.

    Returns ``(sorted slices, positions (Z, 3) LPS, first slice geometry, slice step sz in mm)``.
    """
    geometries = [_slice_geometry(slice_) for slice_ in slices]
    first = geometries[0]
    rows, columns = int(slices[0].dataset.Rows), int(slices[0].dataset.Columns)
    for slice_, geometry in zip(slices, geometries, strict=True):
        if int(slice_.dataset.Rows) != rows or int(slice_.dataset.Columns) != columns:
            raise VolumeImportError(
                f"{series_name}: {slice_.display_name} is {slice_.dataset.Rows}x{slice_.dataset.Columns} pixels "
                f"but {slices[0].display_name} is {rows}x{columns}; the series mixes image sizes.",
                "mixed_series",
            )
        if (
            np.max(np.abs(geometry.row_cosine - first.row_cosine)) > _ORIENTATION_TOLERANCE
            or np.max(np.abs(geometry.column_cosine - first.column_cosine)) > _ORIENTATION_TOLERANCE
        ):
            raise VolumeImportError(
                f"{series_name}: {slice_.display_name} has another orientation than {slices[0].display_name}; "
                "the series mixes orientations (e.g. a localizer or a reformat) and cannot form one volume.",
                "mixed_series",
            )
        if np.max(np.abs(geometry.pixel_spacing - first.pixel_spacing)) > _PIXEL_SPACING_TOLERANCE:
            raise VolumeImportError(
                f"{series_name}: {slice_.display_name} has pixel spacing {geometry.pixel_spacing.tolist()} but "
                f"{slices[0].display_name} has {first.pixel_spacing.tolist()}.",
                "mixed_series",
            )
    normal = np.cross(first.row_cosine, first.column_cosine)
    positions = np.stack([geometry.position for geometry in geometries])
    along_normal = positions @ normal
    order = np.argsort(along_normal, kind="stable")
    sorted_slices = [slices[index] for index in order]
    positions = positions[order]
    along_normal = along_normal[order]
    steps = np.diff(along_normal)
    duplicate = np.flatnonzero(steps < _SPACING_ABSOLUTE_TOLERANCE_MM)
    if duplicate.size:
        index = int(duplicate[0])
        raise VolumeImportError(
            f"{series_name}: {sorted_slices[index].display_name} and {sorted_slices[index + 1].display_name} lie "
            f"at the same position ({along_normal[index]:.2f} mm along the slice normal); the series holds "
            "several images per position (time points, echoes or duplicates). Upload one 3D volume per series.",
            "duplicate_slices",
        )
    slice_step = float(np.median(steps))
    tolerance = _SPACING_RELATIVE_TOLERANCE * slice_step + _SPACING_ABSOLUTE_TOLERANCE_MM
    irregular = np.flatnonzero(np.abs(steps - slice_step) > tolerance)
    if irregular.size:
        index = int(irregular[0])
        ratio = steps[index] / slice_step
        reason = (
            f"about {round(ratio) - 1} slice(s) seem to be missing"
            if ratio > 1.5 and abs(ratio - round(ratio)) < 0.05
            else "the slice spacing varies"
        )
        raise VolumeImportError(
            f"{series_name}: slices are {steps[index]:.3f} mm apart between {sorted_slices[index].display_name} "
            f"and {sorted_slices[index + 1].display_name}, but {slice_step:.3f} mm elsewhere: {reason}. "
            "Only regularly spaced series can be imported.",
            "irregular_spacing",
        )
    # In-plane drift of each slice origin relative to a straight stack along the normal.
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.max(np.linalg.norm(in_plane, axis=1)))
    if drift > _TILT_TOLERANCE_PIXELS * float(np.min(first.pixel_spacing)):
        extent = float(along_normal[-1] - along_normal[0])
        angle = math.degrees(math.atan2(drift, extent))
        raise VolumeImportError(
            f"{series_name}: the slices are not stacked along their normal (gantry tilt of about {angle:.1f} "
            "degrees); tilted acquisitions are not supported. Resample the series to an orthogonal grid "
            "(e.g. with your PACS or dcm2nix) and upload it again.",
            "gantry_tilt",
        )
    return sorted_slices, positions, first, slice_step


def _decode_pixels(slice_: DicomSlice, series_name: str) -> tuple[np.ndarray, float, float]:
    """``(pixels (Y, X) as stored, slope, intercept)``; corrupt_dicom when the pixel data cannot be decoded."""
    try:
        with python_warnings.catch_warnings():
            python_warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(str(slice_.path), force=not has_dicom_preamble(slice_.path))
            pixels = dataset.pixel_array
    except Exception as exc:  # pydicom/pylibjpeg raise many types for truncated or undecodable data
        raise VolumeImportError(
            f"{series_name}: the pixel data of {slice_.display_name} could not be decoded "
            f"({type(exc).__name__}: {exc}); the file is truncated or corrupt, or uses an unsupported "
            "compression.",
            "corrupt_dicom",
        ) from None
    expected = (int(slice_.dataset.Rows), int(slice_.dataset.Columns))
    if pixels.shape != expected:
        raise VolumeImportError(
            f"{series_name}: {slice_.display_name} decodes to {pixels.shape} pixels instead of {expected}.",
            "corrupt_dicom",
        )
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    return pixels, slope, intercept


def build_series_volume(
    slices: Sequence[DicomSlice],
    limits: ImportLimits,
    progress: Callable[[float], None] | None = None,
) -> LoadedVolume:
    """Turn the slices of one series into a canonical volume (see the module docstring for the rules).

    Arguments:
        slices: every file of the series, in any order.
        limits: voxel/byte limits, checked before any pixel is decoded.
        progress: called with the fraction of slices decoded (0..1).
    Returns:
        LoadedVolume with array ``(Z, Y, X)`` (Z ascending along the slice normal), HU for CT.
    """
    series_name = describe_series(slices)
    if len(slices) == 1:
        raise VolumeImportError(
            f"{slices[0].display_name} is a single 2D DICOM image; a case needs a 3D series with several "
            "slices (upload all files of the series together).",
            "single_2d_image",
        )
    sorted_slices, positions_lps, first, slice_step = _sorted_geometry(slices, series_name)
    depth = len(sorted_slices)
    rows, columns = int(sorted_slices[0].dataset.Rows), int(sorted_slices[0].dataset.Columns)
    check_volume_size((depth, rows, columns), 4, limits, series_name)

    # Decode straight into the output array (int32 while every rescale is integral, else float32),
    # so a long series never exists twice in memory.
    decoded: np.ndarray | None = None
    slopes: list[float] = []
    intercepts: list[float] = []
    for z, slice_ in enumerate(sorted_slices):
        pixels, slope, intercept = _decode_pixels(slice_, series_name)
        slopes.append(slope)
        intercepts.append(intercept)
        integral = (
            slope == int(slope) and intercept == int(intercept) and np.issubdtype(pixels.dtype, np.integer)
        )
        if decoded is None:
            decoded = np.empty((depth, rows, columns), dtype=np.int32 if integral else np.float32)
        elif not integral and decoded.dtype == np.int32:
            decoded = decoded.astype(np.float32)
        if decoded.dtype == np.int32:
            decoded[z] = pixels.astype(np.int32) * int(slope) + int(intercept)
        else:
            # Rescale in float64 (RescaleSlope like 1.3526 must not lose precision), keep float32.
            decoded[z] = (pixels.astype(np.float64) * slope + intercept).astype(np.float32)
        if progress is not None:
            progress((z + 1) / depth)
    assert decoded is not None
    check_finite(decoded, series_name)
    array = to_storage_dtype(decoded)

    sy, sx = float(first.pixel_spacing[0]), float(first.pixel_spacing[1])
    normal = np.cross(first.row_cosine, first.column_cosine)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = normal * slice_step
    affine_lps[:3, 1] = first.column_cosine * sy
    affine_lps[:3, 2] = first.row_cosine * sx
    affine_lps[:3, 3] = positions_lps[0]
    affine = LPS_TO_RAS @ affine_lps

    header = sorted_slices[0].dataset
    uids = [_sop_uids(slice_.dataset) for slice_ in sorted_slices]
    description = str(header.get("SeriesDescription", "") or "").strip()
    modality = _modality(header)
    name = description or f"{modality} series {header.get('SeriesNumber', '') or ''}".strip()
    warnings: list[str] = []
    if not _uid(header.get("SeriesInstanceUID")):
        warnings.append("The files have no SeriesInstanceUID; they were grouped by folder and geometry.")
    if str(header.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        warnings.append("MONOCHROME1 image: low values are displayed bright on the scanner.")
    slice_thickness = header.get("SliceThickness")
    source_meta: dict[str, Any] = {
        "study_instance_uid": _uid(header.get("StudyInstanceUID")),
        "series_instance_uid": _uid(header.get("SeriesInstanceUID")),
        "frame_of_reference_uid": _uid(header.get("FrameOfReferenceUID")),
        "sop_class_uid": uids[0][0],
        "sop_instance_uids": [uid[1] for uid in uids],
        "uids_from_file_meta": any(uid[2] for uid in uids),
        "source_files": [str(slice_.path) for slice_ in sorted_slices],
        "patient_id": str(header.get("PatientID", "") or ""),
        "patient_name": str(header.get("PatientName", "") or ""),
        "patient_birth_date": str(header.get("PatientBirthDate", "") or ""),
        "patient_sex": str(header.get("PatientSex", "") or ""),
        "study_date": str(header.get("StudyDate", "") or ""),
        "study_time": str(header.get("StudyTime", "") or ""),
        "study_id": str(header.get("StudyID", "") or ""),
        "study_description": str(header.get("StudyDescription", "") or ""),
        "accession_number": str(header.get("AccessionNumber", "") or ""),
        "series_description": description,
        "series_number": str(header.get("SeriesNumber", "") or ""),
        "modality": str(header.get("Modality", "") or ""),
        "manufacturer": str(header.get("Manufacturer", "") or ""),
        "image_orientation_patient": [*first.row_cosine.tolist(), *first.column_cosine.tolist()],
        "image_positions_patient": positions_lps.tolist(),
        "pixel_spacing": [sy, sx],
        "slice_thickness": float(slice_thickness) if slice_thickness not in (None, "") else None,
        "rescale_slopes": slopes,
        "rescale_intercepts": intercepts,
    }
    return LoadedVolume(
        array=array,
        spacing=spacing_from_affine(affine),
        affine=affine,
        modality=modality,
        name=name,
        source_format="dicom",
        source_meta=source_meta,
        warnings=warnings,
    )
