"""DICOM SEG export: read back with highdicom, same voxels per segment per source instance, right references."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from export_builders import PROJECT_LABELS, nifti_source_case, read_dicom_series_as_case

from annotator.exporting import ExportCase, ExportError, write_dicom_seg
from annotator.exporting.dicom_seg import hex_to_cielab

pytestmark = pytest.mark.filterwarnings(
    "ignore:The string .* is unlikely to represent the intended person name"
)


def _ct3slice_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "dicom" / "dcmqi_ct3slice" / "ct").glob("*.dcm"))


def _highdicom_ct2_regular_files(shared_data: Path) -> list[Path]:
    """The three equally spaced 16x16 images of pydicom's CT2 series (the fourth lies 200 mm away)."""
    folder = shared_data / "dicom" / "highdicom_seg" / "source_ct2"
    return [folder / name for name in ("17136", "17166", "17196")]


def _two_class_label(case: ExportCase) -> None:
    """Liver (value 2) on slices 0 and 2, spine (value 5) on slice 2 only; slice 1 stays empty.

    Blocks are placed relative to the slice size and are asymmetric, so a flipped axis would show.
    """
    _, rows, columns = case.label.shape
    case.label[0, rows // 5 : rows // 2, columns // 4 : columns // 2 + 1] = 2
    case.label[2, rows // 4 : rows // 3 + 1, columns // 3 : columns // 2] = 2
    case.label[2, (3 * rows) // 5 : (3 * rows) // 4, columns // 2 : columns - 1] = 5


def _segment_voxels_by_canonical_z(seg: hd.seg.Segmentation, case: ExportCase) -> np.ndarray:
    """Read the SEG back as ``(Z, Y, X, segments)`` ordered by the case's canonical z via source UIDs."""
    return seg.get_pixels_by_source_instance(
        source_sop_instance_uids=case.source_meta["sop_instance_uids"],
        combine_segments=False,
        assert_missing_frames_are_empty=True,
    )


def _assert_seg_matches_case(
    seg_path: Path, case: ExportCase, source_files: list[Path]
) -> hd.seg.Segmentation:
    seg = hd.seg.segread(seg_path)
    sources = {
        str(ds.SOPInstanceUID): ds
        for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in source_files)
    }
    first_source = next(iter(sources.values()))

    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == case.source_meta["frame_of_reference_uid"]
    assert seg.StudyInstanceUID == first_source.StudyInstanceUID
    assert seg.PatientID == first_source.PatientID
    (referenced_series,) = seg.ReferencedSeriesSequence
    assert referenced_series.SeriesInstanceUID == case.source_meta["series_instance_uid"]
    referenced_instances = {
        item.ReferencedSOPInstanceUID for item in referenced_series.ReferencedInstanceSequence
    }
    assert referenced_instances == set(case.source_meta["sop_instance_uids"])

    present_values = [value for value in (2, 5, 7) if np.any(case.label == value)]
    names = {2: "liver", 5: "spine", 7: "unused class"}
    assert [segment.SegmentLabel for segment in seg.SegmentSequence] == [
        names[value] for value in present_values
    ]
    assert all(segment.SegmentAlgorithmType == "SEMIAUTOMATIC" for segment in seg.SegmentSequence)
    voxels = _segment_voxels_by_canonical_z(seg, case)
    assert voxels.shape == (*case.label.shape, len(present_values))
    for segment_index, value in enumerate(present_values):
        assert np.array_equal(voxels[..., segment_index].astype(bool), case.label == value), names[value]
    # Every stored frame names the source instance it segments; empty slices have no frame.
    frame_sources = [
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
    ]
    non_empty_uids = {
        uid for z, uid in enumerate(case.source_meta["sop_instance_uids"]) if np.any(case.label[z])
    }
    assert set(frame_sources) == non_empty_uids
    return seg


@pytest.mark.parametrize("series", ["dcmqi_ct3slice", "highdicom_ct2"])
def test_seg_of_real_ct_reads_back_with_same_voxels_frame_of_reference_and_references(
    tmp_path, shared_data, series
):
    if series == "dcmqi_ct3slice":
        files = _ct3slice_files(shared_data)
    else:
        files = _highdicom_ct2_regular_files(shared_data)
    case = read_dicom_series_as_case(files, "ct3")
    _two_class_label(case)

    write_dicom_seg(case, PROJECT_LABELS, files, tmp_path / "seg.dcm", series_description="Liver review")

    seg = _assert_seg_matches_case(tmp_path / "seg.dcm", case, files)
    assert seg.SeriesDescription == "Liver review"
    assert seg.SeriesInstanceUID != case.source_meta["series_instance_uid"]
    liver, spine = seg.SegmentSequence
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"  # SCT Tissue
    assert liver.RecommendedDisplayCIELabValue != spine.RecommendedDisplayCIELabValue


def test_seg_of_a_series_imported_by_the_importer_reads_back_voxel_exact(tmp_path, shared_data):
    """End to end with annotator.imaging: its source_meta (UIDs per z, files) drives the SEG."""
    upload = pytest.importorskip("annotator.imaging.upload")
    types = pytest.importorskip("annotator.imaging.types")
    result = upload.read_upload(_ct3slice_files(shared_data), tmp_path / "work", types.ImportLimits())
    (volume,) = result.volumes
    case = ExportCase(
        "imported",
        volume.array,
        np.zeros(volume.shape, dtype=np.uint8),
        volume.affine,
        volume.source_format,
        volume.source_meta,
    )
    _two_class_label(case)
    source_files = [Path(path) for path in volume.source_meta["source_files"]]

    write_dicom_seg(case, PROJECT_LABELS, source_files, tmp_path / "seg.dcm")

    _assert_seg_matches_case(tmp_path / "seg.dcm", case, source_files)


@pytest.mark.parametrize("series", ["dcmqi_ct3slice", "highdicom_ct2"])
def test_seg_passes_the_dicom3tools_iod_validator(tmp_path, shared_data, series):
    """An independent DICOM tool (dciodvfy, Debian package dicom3tools) finds no error in the SEG."""
    validator = shutil.which("dciodvfy")
    if validator is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    files = (
        _ct3slice_files(shared_data)
        if series == "dcmqi_ct3slice"
        else _highdicom_ct2_regular_files(shared_data)
    )
    case = read_dicom_series_as_case(files, series)
    _two_class_label(case)
    write_dicom_seg(case, PROJECT_LABELS, files, tmp_path / "seg.dcm")

    report = subprocess.run(
        [validator, "-new", str(tmp_path / "seg.dcm")], capture_output=True, text=True, timeout=60
    )

    output = report.stdout + report.stderr
    assert "Segmentation" in output  # it recognised the IOD
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert errors == []


def test_seg_of_a_series_without_study_and_series_uids_is_refused_with_a_reason(tmp_path, shared_data):
    """The JPEG 2000 20-slice CT has empty StudyInstanceUID/SeriesInstanceUID: nothing a SEG could reference."""
    files = sorted((shared_data / "dicom" / "ct_series_20slice" / "dicom").iterdir())
    case = read_dicom_series_as_case(files, "ct20")
    case.label[3:6, 200:260, 240:300] = 2

    with pytest.raises(ExportError, match="have no StudyInstanceUID"):
        write_dicom_seg(case, PROJECT_LABELS, list(reversed(files)), tmp_path / "seg.dcm")
    assert list(tmp_path.iterdir()) == []


def test_seg_for_a_nifti_source_is_refused(tmp_path):
    case = nifti_source_case("nifti", (3, 4, 5), seed=1, label_values=[2])

    with pytest.raises(ExportError, match="imported from NIFTI, not DICOM"):
        write_dicom_seg(case, PROJECT_LABELS, [], tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_seg_with_reversed_slice_order_is_refused_before_writing(tmp_path, shared_data):
    files = _ct3slice_files(shared_data)
    case = read_dicom_series_as_case(files, "ct3")
    _two_class_label(case)
    case.source_meta["sop_instance_uids"] = case.source_meta["sop_instance_uids"][::-1]

    with pytest.raises(ExportError, match="slice order or geometry differs"):
        write_dicom_seg(case, PROJECT_LABELS, files, tmp_path / "seg.dcm")
    assert list(tmp_path.iterdir()) == []


def test_seg_with_a_flipped_row_axis_is_refused(tmp_path, shared_data):
    files = _ct3slice_files(shared_data)
    case = read_dicom_series_as_case(files, "ct3")
    _two_class_label(case)
    flip_rows = np.eye(4)
    flip_rows[1, 1] = -1.0
    flip_rows[1, 3] = case.label.shape[1] - 1
    case.affine = case.affine @ flip_rows

    with pytest.raises(ExportError, match="in-plane axes do not match"):
        write_dicom_seg(case, PROJECT_LABELS, files, tmp_path / "seg.dcm")


def test_seg_without_the_source_file_of_a_slice_is_refused(tmp_path, shared_data):
    files = _ct3slice_files(shared_data)
    case = read_dicom_series_as_case(files, "ct3")
    _two_class_label(case)
    missing_z = case.source_meta["source_files"].index(str(files[0]))

    with pytest.raises(ExportError, match=rf"lack the instances of slices \[{missing_z}\]"):
        write_dicom_seg(case, PROJECT_LABELS, files[1:], tmp_path / "seg.dcm")


def test_seg_of_an_empty_label_or_unknown_values_is_refused(tmp_path, shared_data):
    files = _ct3slice_files(shared_data)
    case = read_dicom_series_as_case(files, "ct3")

    with pytest.raises(ExportError, match="label map is empty"):
        write_dicom_seg(case, PROJECT_LABELS, files, tmp_path / "seg.dcm")
    case.label[1, 5, 5] = 9
    with pytest.raises(ExportError, match=r"label values \[9\] are not label classes"):
        write_dicom_seg(case, PROJECT_LABELS, files, tmp_path / "seg.dcm")


def test_seg_with_a_label_on_another_grid_than_the_image_is_refused(tmp_path, shared_data):
    files = _ct3slice_files(shared_data)
    case = read_dicom_series_as_case(files, "ct3")
    case.label = np.ones((3, 256, 256), dtype=np.uint8) * 2

    with pytest.raises(ExportError, match="differs from image shape"):
        write_dicom_seg(case, PROJECT_LABELS, files, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


@pytest.mark.parametrize(
    ("color", "expected_lab"),
    [("#ffffff", (100.0, 0.0, 0.0)), ("#000000", (0.0, 0.0, 0.0)), ("#ff0000", (53.24, 80.09, 67.20))],
)
def test_class_colours_become_the_cielab_display_colour(color, expected_lab):
    scaled = hex_to_cielab(color).value  # DICOM scaling: L 0..100 -> 0..65535, a/b -128..127 -> 0..65535
    lab = (scaled[0] / 65535 * 100, scaled[1] / 65535 * 255 - 128, scaled[2] / 65535 * 255 - 128)
    assert lab == pytest.approx(expected_lab, abs=0.05)
