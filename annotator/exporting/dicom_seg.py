"""DICOM SEG export (highdicom) of a case imported from a DICOM series.

One BINARY Segmentation instance per case, referencing the source series: the source images are read
(headers only) from the stored source files and put in canonical z order by matching their SOPInstanceUID
to ``source_meta["sop_instance_uids"][z]``, so every SEG frame points at the right source instance and the
SEG inherits the source's patient, study and FrameOfReferenceUID. Frame ``z`` of the label map
``(Z, Y, X)`` is the segmentation of source instance ``z`` (Y = rows, X = columns, as imported).

Segments: one per label class PRESENT in the label (segment numbers 1..N in ascending project value), so a
reader never meets a described segment without frames (a case highdicom and other tools handle poorly).
Each segment's label is the class name, its recommended display colour the class colour (as CIELab), its
algorithm type SEMIAUTOMATIC (a propagation model plus human correction), and its coded category/type the
generic SNOMED CT "Tissue" / "Tissue" (85756007) unless the caller passes specific codes per class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .types import ExportCase, ExportError, LabelSpec, validate_case, validate_label_specs

GENERIC_SEGMENT_CATEGORY: Code = codes.SCT.Tissue
GENERIC_SEGMENT_TYPE: Code = codes.SCT.Tissue
# LPS <-> RAS: negate the first two world coordinates.
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
# Direction cosines of the canonical grid and of the DICOM images must agree this closely.
_DIRECTION_TOLERANCE = 1e-3


def hex_to_cielab(color: str) -> hd.color.CIELabColor:
    """``"#rrggbb"`` (sRGB) -> CIELab (D65 white) for RecommendedDisplayCIELabValue."""
    rgb = [int(color[index : index + 2], 16) / 255.0 for index in (1, 3, 5)]
    linear = [
        channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4 for channel in rgb
    ]
    red, green, blue = linear
    x_value = (0.4124564 * red + 0.3575761 * green + 0.1804375 * blue) / 0.95047
    y_value = 0.2126729 * red + 0.7151522 * green + 0.0721750 * blue
    z_value = (0.0193339 * red + 0.1191920 * green + 0.9503041 * blue) / 1.08883

    def f(t: float) -> float:  # t >= 0: XYZ of an sRGB colour is never negative
        return t ** (1.0 / 3.0) if t > (6.0 / 29.0) ** 3 else t / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0

    l_star = 116.0 * f(y_value) - 16.0
    a_star = 500.0 * (f(x_value) - f(y_value))
    b_star = 200.0 * (f(y_value) - f(z_value))
    return hd.color.CIELabColor(
        min(max(l_star, 0.0), 100.0), min(max(a_star, -128.0), 127.0), min(max(b_star, -128.0), 127.0)
    )


def _read_source_headers(source_files: Sequence[Path]) -> dict[str, Dataset]:
    """SOPInstanceUID -> dataset (pixel data not read) for every readable source file."""
    by_uid: dict[str, Dataset] = {}
    for path in source_files:
        try:
            dataset = pydicom.dcmread(str(path), stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            raise ExportError(f"Source file {Path(path).name} could not be read as DICOM: {exc}") from None
        file_meta = getattr(dataset, "file_meta", None)
        # Some files carry their SOP UIDs only in the file meta header (the importer accepts them too).
        if not str(dataset.get("SOPInstanceUID", "") or "") and file_meta is not None:
            dataset.SOPInstanceUID = str(file_meta.get("MediaStorageSOPInstanceUID", "") or "")
        if not str(dataset.get("SOPClassUID", "") or "") and file_meta is not None:
            dataset.SOPClassUID = str(file_meta.get("MediaStorageSOPClassUID", "") or "")
        uid = str(dataset.get("SOPInstanceUID", "") or "")
        if uid:
            by_uid[uid] = dataset
    return by_uid


def _ordered_source_images(case: ExportCase, source_files: Sequence[Path]) -> list[Dataset]:
    """The source datasets in canonical z order, checked against the case's geometry.

    Raises ExportError: missing ``sop_instance_uids``, a z whose instance is not among ``source_files``,
    images of several series or without Study/Series/SOP Class UIDs, an image size other than ``(Y, X)``, a FrameOfReferenceUID that differs from
    ``source_meta``, or image positions/orientation that do not match the canonical affine.
    """
    meta = case.source_meta or {}
    sop_instance_uids = [str(uid) for uid in meta.get("sop_instance_uids") or []]
    z_size, rows, columns = (int(side) for side in np.shape(case.label))
    if len(sop_instance_uids) != z_size:
        raise ExportError(
            f"Case {case.case_id!r}: source_meta['sop_instance_uids'] lists {len(sop_instance_uids)} instances "
            f"for {z_size} slices."
        )
    by_uid = _read_source_headers(source_files)
    missing = [z for z, uid in enumerate(sop_instance_uids) if uid not in by_uid]
    if missing:
        raise ExportError(
            f"Case {case.case_id!r}: the source DICOM files lack the instances of slices {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} (SOPInstanceUID {sop_instance_uids[missing[0]]})."
        )
    ordered = [by_uid[uid] for uid in sop_instance_uids]
    series_uids = {str(dataset.get("SeriesInstanceUID", "") or "") for dataset in ordered}
    if len(series_uids) != 1:
        raise ExportError(f"Case {case.case_id!r}: the source instances belong to {len(series_uids)} series.")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
        if any(not str(dataset.get(keyword, "") or "") for dataset in ordered):
            raise ExportError(
                f"Case {case.case_id!r}: the source images have no {keyword}, so a DICOM SEG cannot reference "
                "them; export the label map as NIfTI instead."
            )
    expected_frame_of_reference = str(meta.get("frame_of_reference_uid") or "")
    for z, dataset in enumerate(ordered):
        if (int(dataset.Rows), int(dataset.Columns)) != (rows, columns):
            raise ExportError(
                f"Case {case.case_id!r}: source image of slice {z} is {dataset.Rows}x{dataset.Columns}, the label "
                f"slice is {rows}x{columns}."
            )
        frame_of_reference = str(dataset.get("FrameOfReferenceUID", "") or "")
        if expected_frame_of_reference and frame_of_reference != expected_frame_of_reference:
            raise ExportError(
                f"Case {case.case_id!r}: source image of slice {z} has FrameOfReferenceUID {frame_of_reference}, "
                f"the imported case has {expected_frame_of_reference}."
            )
    _check_geometry(case, ordered)
    return ordered


def _check_geometry(case: ExportCase, ordered: Sequence[Dataset]) -> None:
    """Check that canonical index ``(z, y, x)`` is pixel ``(row y, column x)`` of source image ``z``.

    Compares the canonical affine's in-plane directions with ImageOrientationPatient and its slice
    positions with ImagePositionPatient (within a quarter of the slice spacing), which catches reversed
    slice order and flipped rows/columns before a misaligned SEG is written.
    """
    affine_lps = np.asarray(case.affine, dtype=np.float64)[:3, :]
    affine_lps = _LPS_FROM_RAS @ affine_lps
    spacing = np.linalg.norm(affine_lps[:, :3], axis=0)
    column_step_direction = affine_lps[:, 2] / spacing[2]  # x: along a row, = IOP row cosine
    row_step_direction = affine_lps[:, 1] / spacing[1]  # y: down a column, = IOP column cosine
    for z, dataset in enumerate(ordered):
        orientation = dataset.get("ImageOrientationPatient")
        position = dataset.get("ImagePositionPatient")
        if orientation is None or position is None:
            raise ExportError(
                f"Case {case.case_id!r}: source image of slice {z} has no ImageOrientationPatient/"
                "ImagePositionPatient; a SEG needs the source geometry."
            )
        cosines = np.asarray([float(value) for value in orientation], dtype=np.float64)
        if (
            np.max(np.abs(cosines[:3] - column_step_direction)) > _DIRECTION_TOLERANCE
            or np.max(np.abs(cosines[3:] - row_step_direction)) > _DIRECTION_TOLERANCE
        ):
            raise ExportError(
                f"Case {case.case_id!r}: the case's in-plane axes do not match the source images' orientation "
                f"(slice {z}); the label is not on the DICOM pixel grid."
            )
        expected_position = affine_lps @ np.array([z, 0.0, 0.0, 1.0])
        actual_position = np.asarray([float(value) for value in position], dtype=np.float64)
        if np.linalg.norm(actual_position - expected_position) > 0.25 * spacing[0]:
            raise ExportError(
                f"Case {case.case_id!r}: source image {z} lies at {actual_position.round(3).tolist()} mm (LPS), "
                f"the case's slice {z} at {expected_position.round(3).tolist()} mm; slice order or geometry "
                "differs from the source series."
            )


def write_dicom_seg(
    case: ExportCase,
    labels: Sequence[LabelSpec],
    source_files: Sequence[Path],
    out_path: Path,
    *,
    series_description: str = "PropLabel segmentation",
    series_number: int = 300,
    instance_number: int = 1,
    manufacturer: str = "PropLabel",
    manufacturer_model_name: str = "PropLabel",
    software_versions: str = "0.1.0",
    device_serial_number: str = "0",
    algorithm_name: str = "PropLabel propagation",
    algorithm_version: str = "0.1.0",
    content_creator_name: str | None = None,
    segment_codes: Mapping[int, tuple[Code, Code]] | None = None,
) -> Path:
    """Write the case's label map as a BINARY DICOM Segmentation referencing its source series.

    Arguments:
        case: a DICOM-sourced case; ``label`` uint8 ``(Z, Y, X)`` with frame z on source instance
            ``source_meta["sop_instance_uids"][z]``.
        labels: the project's label classes; values present in the label become segments.
        source_files: the stored files of the source series (any order; extra files of the same series are
            ignored, files of other instances are simply not referenced).
        out_path: destination ``.dcm``; written to a temporary name and renamed when complete.
        series_description, series_number, instance_number, manufacturer, manufacturer_model_name,
        software_versions, device_serial_number: the SEG series/equipment attributes.
        algorithm_name, algorithm_version: AlgorithmIdentificationSequence of every segment (family:
            DCM "Artificial Intelligence").
        content_creator_name: optional person name (``"Family^Given"``) of the annotator.
        segment_codes: optional ``{project value: (category code, type code)}`` for classes with a known
            coded meaning; others get the generic SNOMED CT Tissue/Tissue.

    Returns:
        ``out_path``.

    Raises:
        ExportError: the case was not imported from DICOM, the label is empty, label values are not label
            classes, or the source files do not match the case (see ``_ordered_source_images``).
    """
    if case.source_format != "dicom":
        raise ExportError(
            f"Case {case.case_id!r} was imported from {case.source_format.upper()}, not DICOM: a DICOM SEG needs "
            "a DICOM source series to reference. Export it as NIfTI instead."
        )
    ordered_labels = validate_label_specs(labels)
    label = validate_case(case, [spec.value for spec in ordered_labels])
    present_values = [
        int(value) for value in np.flatnonzero(np.bincount(label.ravel(), minlength=256)) if value
    ]
    if not present_values:
        raise ExportError(f"Case {case.case_id!r}: the label map is empty; there is no segment to export.")
    source_images = _ordered_source_images(case, source_files)

    specs_by_value = {int(spec.value): spec for spec in ordered_labels}
    segment_number_of_value = {value: number for number, value in enumerate(present_values, start=1)}
    lookup = np.zeros(256, dtype=np.uint8)
    for value, number in segment_number_of_value.items():
        lookup[value] = number
    segment_map = lookup[label]  # (Z, Y, X) label-map style: pixel value = segment number

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.DCM.ArtificialIntelligence, version=algorithm_version
    )
    descriptions = []
    for value, number in segment_number_of_value.items():
        spec = specs_by_value[value]
        category, property_type = (segment_codes or {}).get(
            value, (GENERIC_SEGMENT_CATEGORY, GENERIC_SEGMENT_TYPE)
        )
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=spec.name.strip()[:64],
                segmented_property_category=category,
                segmented_property_type=property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=spec.name.strip()[:64],
                tracking_uid=hd.UID(),
                display_color=hex_to_cielab(spec.color),
            )
        )
    try:
        segmentation = hd.seg.Segmentation(
            source_images=source_images,
            pixel_array=segment_map,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=instance_number,
            manufacturer=manufacturer,
            manufacturer_model_name=manufacturer_model_name,
            software_versions=software_versions,
            device_serial_number=device_serial_number,
            content_description=series_description[:64],
            content_creator_name=content_creator_name,
            series_description=series_description[:64],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ExportError(f"Case {case.case_id!r}: the DICOM SEG could not be built: {exc}") from exc
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial_path = out_path.with_name(f".{out_path.name}.partial")
    try:
        segmentation.save_as(str(partial_path))
        partial_path.replace(out_path)
    except BaseException:
        partial_path.unlink(missing_ok=True)
        raise
    return out_path
