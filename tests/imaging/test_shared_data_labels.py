"""Label files from ../shared/data line up with their images voxel for voxel after import."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from annotator.imaging import ImportLimits, LoadedVolume, VolumeImportError, align_label, read_upload

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CT20 = "dicom/ct_series_20slice"
CT3 = "dicom/dcmqi_ct3slice"

pytestmark = pytest.mark.shared_data


def _import_dicom(folder: Path, work_dir: Path) -> LoadedVolume:
    files = sorted(path for path in folder.iterdir() if path.is_file())
    (volume,) = read_upload(files, work_dir, ImportLimits()).volumes
    return volume


def _resample_nearest_in_world(label_path: Path, volume: LoadedVolume) -> np.ndarray:
    """Reference: for every volume voxel, look up the label voxel at the same world point (nearest)."""
    image = nib.load(str(label_path))
    label_ijk = np.asanyarray(image.dataobj)
    z, y, x = np.meshgrid(*(np.arange(side) for side in volume.shape), indexing="ij")
    index_zyx = np.stack([z.ravel(), y.ravel(), x.ravel(), np.ones(z.size)])
    world = volume.affine @ index_zyx
    ijk = np.rint(np.linalg.inv(image.affine) @ world)[:3].astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(label_ijk.shape)[:, None]), axis=0)
    assert inside.all(), "the label covers the whole image"
    return label_ijk[ijk[0], ijk[1], ijk[2]].reshape(volume.shape)


@pytest.fixture
def ct20(shared_data, tmp_path) -> LoadedVolume:
    return _import_dicom(shared_data / CT20 / "dicom", tmp_path / "work")


def test_y_flipped_totalsegmentator_label_equals_a_physically_resampled_reference(ct20, shared_data):
    label_path = shared_data / CT20 / "example_seg_dicom.nii.gz"
    aligned = align_label(label_path, ct20, allowed_values=range(1, 118))
    np.testing.assert_array_equal(aligned, _resample_nearest_in_world(label_path, ct20))
    naive = np.asanyarray(nib.load(str(label_path)).dataobj).transpose(2, 1, 0)
    assert not np.array_equal(aligned, naive), "the label file really is stored flipped"


def test_aligned_labels_sit_on_the_right_tissue(ct20, shared_data):
    label_path = shared_data / CT20 / "example_seg_dicom.nii.gz"
    aligned = align_label(label_path, ct20, allowed_values=None)
    names = {
        value: name
        for name, value in json.loads(
            (shared_data / "Dataset003_TotalSegmentatorCT/dataset.json").read_text()
        )["labels"].items()
    }
    hu = ct20.array.astype(np.float64)
    # dicom/README.md: mean HU inside the liver is 89 when aligned, -75 when overlaid naively
    assert hu[aligned == 5].mean() == pytest.approx(89, abs=2)
    naive = np.asanyarray(nib.load(str(label_path)).dataobj).transpose(2, 1, 0)
    assert hu[naive == 5].mean() == pytest.approx(-75, abs=2)
    bone_values = [
        value
        for value in np.unique(aligned)
        if value and any(word in names[int(value)] for word in ("vertebrae", "rib_", "humerus"))
    ]
    assert len(bone_values) >= 10
    assert hu[np.isin(aligned, bone_values)].mean() > 250
    assert hu[aligned == 79].mean() < 80  # spinal cord: soft tissue inside the bone ring


def test_label_values_outside_the_project_classes_are_refused_on_real_labels(ct20, shared_data):
    with pytest.raises(VolumeImportError) as caught:
        align_label(shared_data / CT20 / "example_seg_dicom.nii.gz", ct20, allowed_values={1, 5})
    assert caught.value.code == "label_unknown_values"
    assert "uses 29 label values" in caught.value.message
    assert "6, 7, 8, 20" in caught.value.message


@pytest.fixture
def ct3(shared_data, tmp_path) -> LoadedVolume:
    return _import_dicom(shared_data / CT3 / "ct", tmp_path / "work")


@pytest.mark.parametrize(
    ("nrrd_name", "counts"),
    [
        ("heart_seg.nrrd", {3: 41449}),
        ("liver_seg.nrrd", {1: 107098}),
        ("liver_spine_gapped_seg.nrrd", {1: 107098, 5: 12439}),
        ("liver_spine_seg.nrrd", {1: 107098, 2: 12439}),
        ("partial_overlaps-1.nrrd", {1: 9602, 4: 6693, 5: 4713}),
        ("partial_overlaps-2.nrrd", {2: 11888}),
        ("partial_overlaps-3.nrrd", {3: 10743}),
        ("spine_seg.nrrd", {2: 12439}),
        ("spine_seg_label5.nrrd", {5: 12439}),
    ],
)
def test_nrrd_label_maps_line_up_with_the_three_slice_ct(ct3, shared_data, nrrd_name, counts):
    aligned = align_label(shared_data / CT3 / "nrrd" / nrrd_name, ct3, allowed_values=range(1, 6))
    values, voxel_counts = np.unique(aligned, return_counts=True)
    assert {int(v): int(c) for v, c in zip(values, voxel_counts, strict=True) if v} == counts


def test_liver_is_bright_soft_tissue_in_the_nrrd_label(ct3, shared_data):
    aligned = align_label(shared_data / CT3 / "nrrd/liver_seg.nrrd", ct3, allowed_values={1})
    assert 30 < ct3.array[aligned == 1].mean() < 200


def test_dicom_seg_liver_equals_the_nrrd_it_was_made_from(ct3, shared_data):
    from_seg = align_label(shared_data / CT3 / "seg/liver.dcm", ct3, allowed_values={1})
    from_nrrd = align_label(shared_data / CT3 / "nrrd/liver_seg.nrrd", ct3, allowed_values={1})
    np.testing.assert_array_equal(from_seg, from_nrrd)


def test_dicom_seg_with_overlapping_segments_is_refused(ct3, shared_data):
    with pytest.raises(VolumeImportError) as caught:
        align_label(shared_data / CT3 / "seg/partial_overlaps.dcm", ct3, allowed_values=None)
    assert caught.value.code == "label_overlap"
    assert "partial_overlaps.dcm" in caught.value.message


def test_nrrd_label_does_not_fit_the_twenty_slice_ct(ct20, shared_data):
    with pytest.raises(VolumeImportError) as caught:
        align_label(shared_data / CT3 / "nrrd/liver_seg.nrrd", ct20, allowed_values=None)
    assert caught.value.code == "label_grid_mismatch"


def _cases() -> list[dict[str, str]]:
    table = SHARED_DATA / "cases.csv"
    if not table.exists():
        return []
    with table.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("case", _cases(), ids=lambda case: case["case"])
def test_nnunet_label_aligns_with_its_image_and_keeps_its_voxel_counts(case, shared_data, tmp_path):
    (volume,) = read_upload([shared_data / case["image"]], tmp_path / "work", ImportLimits()).volumes
    dataset_json = json.loads((shared_data / case["dataset"] / "dataset.json").read_text())
    aligned = align_label(shared_data / case["label"], volume, allowed_values=dataset_json["labels"].values())
    expected = dict(item.split(":") for item in case["label_voxels"].split(";"))
    values, counts = np.unique(aligned, return_counts=True)
    assert {str(v): str(c) for v, c in zip(values, counts, strict=True)} == expected
