"""nnU-Net v2 raw data set export: nnU-Net's own integrity check, voxel-exact labels on the source grid."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from export_builders import PROJECT_LABELS, dicom_source_case, nifti_source_case

from annotator.exporting import (
    ExportCase,
    ExportError,
    LabelSpec,
    write_case_label_nifti,
    write_nnunet_dataset,
)


@pytest.fixture(autouse=True)
def _nnunet_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nnunetv2 reads these at import; point them at scratch folders so it neither warns nor writes elsewhere."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.setenv(name, str(folder))


def _verify_with_nnunet(dataset_dir: Path) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(dataset_dir), num_processes=1)


def _synthetic_cases() -> list[ExportCase]:
    return [
        nifti_source_case("nifti case/1", (6, 9, 11), seed=1, label_values=[2, 5]),
        dicom_source_case("dicom case 2", (5, 8, 10), seed=2, label_values=[5]),
        nifti_source_case("nifti case/1", (4, 7, 8), seed=3, label_values=[2]),  # same id -> made unique
    ]


def _expected_nnunet_label(case: ExportCase) -> np.ndarray:
    """Project values 2, 5, 7 -> nnU-Net ids 1, 2, 3, on the source (i, j, k) grid."""
    remapped = np.zeros_like(case.label)
    for nnunet_id, value in enumerate((2, 5, 7), start=1):
        remapped[case.label == value] = nnunet_id
    return remapped.transpose(2, 1, 0)


def test_synthetic_export_passes_nnunet_integrity_check_with_voxel_exact_labels_on_source_geometry(tmp_path):
    cases = _synthetic_cases()
    dataset_dir = write_nnunet_dataset(tmp_path / "out", 7, "Liver spine!", cases, PROJECT_LABELS, "CT")

    assert dataset_dir == tmp_path / "out" / "Dataset007_Liver_spine"
    _verify_with_nnunet(dataset_dir)

    dataset_json = json.loads((dataset_dir / "dataset.json").read_text())
    identifiers = list(dataset_json["case_ids"])
    assert identifiers == ["nifti_case_1", "dicom_case_2", "nifti_case_1_2"]
    for identifier, case in zip(identifiers, cases, strict=True):
        image_file = nib.load(dataset_dir / "imagesTr" / f"{identifier}_0000.nii.gz")
        label_file = nib.load(dataset_dir / "labelsTr" / f"{identifier}.nii.gz")
        assert np.array_equal(np.asanyarray(label_file.dataobj), _expected_nnunet_label(case))
        assert label_file.get_data_dtype() == np.uint8
        assert np.array_equal(np.asanyarray(image_file.dataobj), case.image.transpose(2, 1, 0))
        assert image_file.get_data_dtype() == case.image.dtype
        assert np.array_equal(image_file.affine, label_file.affine)
        if case.source_format == "nifti":
            assert np.array_equal(image_file.affine, np.asarray(case.source_meta["affine"]))
            assert int(image_file.header["sform_code"]) == 2
            assert int(image_file.header["qform_code"]) == 1
        else:
            expected = np.asarray(case.affine)[:, [2, 1, 0, 3]]
            np.testing.assert_allclose(image_file.affine, expected, atol=1e-4)


def test_nnunet_integrity_check_rejects_a_label_outside_dataset_json(tmp_path):
    """Guards the test above: the check really reads the labels (it is not a no-op on our files)."""
    dataset_dir = write_nnunet_dataset(tmp_path, 8, "Broken", _synthetic_cases()[:1], PROJECT_LABELS)
    label_path = dataset_dir / "labelsTr" / "nifti_case_1.nii.gz"
    label_file = nib.load(label_path)
    corrupted = np.asanyarray(label_file.dataobj).copy()
    corrupted[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(corrupted, label_file.affine, label_file.header), label_path)

    with pytest.raises(RuntimeError, match="unexpected labels"):
        _verify_with_nnunet(dataset_dir)


def test_dataset_json_maps_non_consecutive_project_values_to_consecutive_ids(tmp_path):
    dataset_dir = write_nnunet_dataset(tmp_path, 9, "Mapping", _synthetic_cases()[:2], PROJECT_LABELS, "MRI")

    dataset_json = json.loads((dataset_dir / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "liver": 1, "spine": 2, "unused class": 3}
    assert dataset_json["channel_names"] == {"0": "MRI"}
    assert dataset_json["numTraining"] == 2
    assert dataset_json["file_ending"] == ".nii.gz"
    assert dataset_json["label_value_mapping"]["spine"] == {
        "project_value": 5,
        "nnunet_value": 2,
        "color": "#f0e68c",
    }
    assert dataset_json["case_ids"] == {"nifti_case_1": "nifti case/1", "dicom_case_2": "dicom case 2"}


def test_cases_are_written_one_at_a_time_and_progress_reaches_one(tmp_path):
    written_before_next: list[bool] = []
    reported: list[float] = []

    def lazily_loaded_cases() -> Iterator[ExportCase]:
        for index, case in enumerate(_synthetic_cases()[:2]):
            if index > 0:
                written_before_next.append(any((tmp_path / "Dataset010_Lazy" / "labelsTr").iterdir()))
            yield case

    write_nnunet_dataset(
        tmp_path, 10, "Lazy", lazily_loaded_cases(), PROJECT_LABELS, progress=reported.append, num_cases=2
    )

    assert written_before_next == [True]
    assert reported == [0.5, 1.0]


def test_real_hippocampus_case_exports_bit_identical_label_and_affine(tmp_path, shared_data):
    dataset = shared_data / "Dataset001_Hippocampus"
    source_image = nib.load(dataset / "imagesTr" / "hippocampus_001_0000.nii.gz")
    source_label = nib.load(dataset / "labelsTr" / "hippocampus_001.nii.gz")
    source_label_data = np.asanyarray(source_label.dataobj)
    case = ExportCase(
        case_id="hippocampus_001",
        image=np.asanyarray(source_image.dataobj).transpose(2, 1, 0),
        label=source_label_data.transpose(2, 1, 0),
        affine=np.asarray(source_image.affine)[:, [2, 1, 0, 3]],
        source_format="nifti",
        source_meta={
            "affine": np.asarray(source_image.affine).tolist(),
            "shape": list(source_image.shape),
            "sform_code": int(source_image.header["sform_code"]),
            "qform_code": int(source_image.header["qform_code"]),
        },
    )
    labels = [LabelSpec(1, "anterior", "#ff0000"), LabelSpec(2, "posterior", "#0000ff")]

    dataset_dir = write_nnunet_dataset(tmp_path, 1, "Hippocampus", [case], labels, "MRI")

    _verify_with_nnunet(dataset_dir)
    exported_label = nib.load(dataset_dir / "labelsTr" / "hippocampus_001.nii.gz")
    exported_image = nib.load(dataset_dir / "imagesTr" / "hippocampus_001_0000.nii.gz")
    assert np.array_equal(np.asanyarray(exported_label.dataobj), source_label_data)
    assert np.array_equal(exported_label.affine, source_label.affine)
    assert np.array_equal(exported_image.affine, source_image.affine)
    assert np.array_equal(np.asanyarray(exported_image.dataobj), np.asanyarray(source_image.dataobj))


def test_real_nifti_imported_by_the_importer_exports_back_onto_its_source_grid(tmp_path, shared_data):
    """End to end with annotator.imaging: the importer's source_meta is what export relies on."""
    upload = pytest.importorskip("annotator.imaging.upload")
    types = pytest.importorskip("annotator.imaging.types")
    source = shared_data / "Dataset003_TotalSegmentatorCT" / "imagesTr" / "totalseg_example_ct_sm_0000.nii.gz"
    source_label = nib.load(source.parent.parent / "labelsTr" / "totalseg_example_ct_sm.nii.gz")
    result = upload.read_upload([source], tmp_path / "work", types.ImportLimits())
    (volume,) = result.volumes
    label_data = np.asanyarray(source_label.dataobj)
    values = sorted(int(value) for value in np.unique(label_data) if value)
    case = ExportCase(
        "ct",
        volume.array,
        label_data.transpose(2, 1, 0),
        volume.affine,
        volume.source_format,
        volume.source_meta,
    )

    write_case_label_nifti(case, tmp_path / "ct_label.nii.gz")
    dataset_dir = write_nnunet_dataset(
        tmp_path, 3, "CT", [case], [LabelSpec(value, f"class {value}", "#808080") for value in values]
    )

    exported_label = nib.load(tmp_path / "ct_label.nii.gz")
    assert np.array_equal(np.asanyarray(exported_label.dataobj), label_data)
    assert np.array_equal(exported_label.affine, source_label.affine)
    exported_image = nib.load(dataset_dir / "imagesTr" / "ct_0000.nii.gz")
    assert np.array_equal(exported_image.affine, nib.load(source).affine)
    assert np.array_equal(np.asanyarray(exported_image.dataobj), np.asanyarray(nib.load(source).dataobj))


def test_case_label_nifti_keeps_project_values_and_uses_the_canonical_affine_for_dicom(tmp_path):
    case = dicom_source_case("d", (4, 6, 5), seed=4, label_values=[5, 7])

    write_case_label_nifti(case, tmp_path / "labels" / "d.nii.gz")

    written = nib.load(tmp_path / "labels" / "d.nii.gz")
    assert np.array_equal(np.asanyarray(written.dataobj), case.label.transpose(2, 1, 0))
    np.testing.assert_allclose(written.affine, np.asarray(case.affine)[:, [2, 1, 0, 3]], atol=1e-4)
    # The canonical index (z, y, x) and the written index (x, y, z) name the same world point.
    z, y, x = 3, 5, 4
    np.testing.assert_allclose(
        written.affine @ [x, y, z, 1], np.asarray(case.affine) @ [z, y, x, 1], atol=1e-3
    )


def test_label_shape_differing_from_image_shape_is_refused(tmp_path):
    case = nifti_source_case("bad", (4, 5, 6), seed=5, label_values=[2])
    case.label = case.label[:, :, :-1]

    with pytest.raises(
        ExportError, match=r"'bad': label shape \(4, 5, 5\) differs from image shape \(4, 5, 6\)"
    ):
        write_nnunet_dataset(tmp_path, 11, "Bad", [case], PROJECT_LABELS)


def test_label_values_that_are_no_project_class_are_refused_and_listed(tmp_path):
    case = nifti_source_case("unknown", (4, 5, 6), seed=6, label_values=[2])
    case.label[0, 0, 0] = 3
    case.label[0, 0, 1] = 200

    with pytest.raises(ExportError, match=r"label values \[3, 200\] are not label classes"):
        write_nnunet_dataset(
            tmp_path, 12, "Bad", [nifti_source_case("good", (3, 4, 5), 9, [2]), case], PROJECT_LABELS
        )
    assert not (tmp_path / "Dataset012_Bad").exists()  # the partial export is removed
    with pytest.raises(ExportError, match=r"label values \[3, 200\]"):
        write_case_label_nifti(case, tmp_path / "x.nii.gz", PROJECT_LABELS)


def test_stored_source_affine_contradicting_the_canonical_affine_is_refused(tmp_path):
    case = nifti_source_case("mismatch", (4, 5, 6), seed=7, label_values=[2])
    case.affine = np.asarray(case.source_meta["affine"])  # forgot to reverse the columns

    with pytest.raises(ExportError, match="does not match the case's canonical affine"):
        write_case_label_nifti(case, tmp_path / "x.nii.gz")


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([], "no label classes"),
        ([LabelSpec(0, "zero", "#000000")], r"values must be 1\.\.255"),
        ([LabelSpec(1, "a", "#000000"), LabelSpec(1, "b", "#000000")], "share the value 1"),
        ([LabelSpec(1, "Liver", "#000000"), LabelSpec(2, "liver", "#000000")], "share the name"),
        ([LabelSpec(1, "background", "#000000")], "reserved"),
        ([LabelSpec(1, "a", "red")], "#rrggbb"),
    ],
)
def test_invalid_label_classes_are_refused(tmp_path, labels, message):
    with pytest.raises(ExportError, match=message):
        write_nnunet_dataset(tmp_path, 13, "Bad", _synthetic_cases()[:1], labels)


def test_export_without_cases_or_into_a_used_folder_is_refused(tmp_path):
    with pytest.raises(ExportError, match="no cases"):
        write_nnunet_dataset(tmp_path, 14, "Empty", [], PROJECT_LABELS)
    (tmp_path / "Dataset015_Used").mkdir()
    (tmp_path / "Dataset015_Used" / "stale.txt").write_text("old export")
    with pytest.raises(ExportError, match="not empty"):
        write_nnunet_dataset(tmp_path, 15, "Used", _synthetic_cases()[:1], PROJECT_LABELS)
    with pytest.raises(ExportError, match=r"1\.\.999"):
        write_nnunet_dataset(tmp_path, 1000, "Big", _synthetic_cases()[:1], PROJECT_LABELS)
    assert not os.path.exists(tmp_path / "Dataset015_Used" / "dataset.json")


def test_real_nrrd_imported_by_the_importer_exports_on_its_ijk_grid_and_ras_affine(tmp_path, shared_data):
    upload = pytest.importorskip("annotator.imaging.upload")
    types = pytest.importorskip("annotator.imaging.types")
    nrrd = pytest.importorskip("nrrd")
    source = shared_data / "dicom" / "dcmqi_ct3slice" / "nrrd" / "liver_spine_seg.nrrd"
    source_data, _ = nrrd.read(str(source))
    result = upload.read_upload([source], tmp_path / "work", types.ImportLimits())
    (volume,) = result.volumes
    label = np.where(volume.array == 2, 5, np.where(volume.array == 1, 2, 0)).astype(np.uint8)
    case = ExportCase("nrrd", volume.array, label, volume.affine, volume.source_format, volume.source_meta)

    write_case_label_nifti(case, tmp_path / "nrrd_label.nii.gz", PROJECT_LABELS)

    written = nib.load(tmp_path / "nrrd_label.nii.gz")
    expected = np.where(source_data == 2, 5, np.where(source_data == 1, 2, 0))
    assert np.array_equal(np.asanyarray(written.dataobj), expected)
    np.testing.assert_allclose(written.affine, np.asarray(volume.source_meta["affine_ras_ijk"]), atol=1e-4)
