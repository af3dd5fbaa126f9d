"""Every image of ../shared/data that the product claims to read imports with the right geometry.

All 320 nnU-Net cases are read (hippocampus crops are tiny; the left-atrium volumes take ~50 ms each) and
checked against cases.csv and against nibabel. DICOM series are checked against the facts in dicom/README.md.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from annotator.imaging import ImportLimits, VolumeImportError, read_upload

# Same location as the shared_data fixture (conftest); needed at collection time for parametrisation.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

pytestmark = pytest.mark.shared_data


def _cases() -> list[dict[str, str]]:
    table = SHARED_DATA / "cases.csv"
    if not table.exists():
        return []
    with table.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("case", _cases(), ids=lambda case: case["case"])
def test_nnunet_image_imports_with_the_geometry_of_cases_csv_and_nibabel(case, tmp_path, shared_data):
    image_path = shared_data / case["image"]
    (volume,) = read_upload([image_path], tmp_path / "work", ImportLimits()).volumes
    shape_xyz = (int(case["shape_x"]), int(case["shape_y"]), int(case["shape_z"]))
    spacing_xyz = (float(case["spacing_x"]), float(case["spacing_y"]), float(case["spacing_z"]))
    assert volume.shape == shape_xyz[::-1]
    assert volume.spacing == pytest.approx(spacing_xyz[::-1], rel=1e-5)
    assert volume.source_format == "nifti"
    assert volume.name == case["case"]

    reference = nib.load(str(image_path))
    np.testing.assert_array_equal(volume.array, np.asanyarray(reference.dataobj).transpose(2, 1, 0))
    np.testing.assert_allclose(volume.affine[:, [2, 1, 0, 3]], reference.affine)
    assert volume.array.dtype == np.dtype(case["img_dtype"])
    assert float(volume.array.min()) == pytest.approx(float(case["img_min"]), rel=1e-4, abs=1e-3)
    assert float(volume.array.max()) == pytest.approx(float(case["img_max"]), rel=1e-4, abs=1e-3)
    assert "".join(nib.aff2axcodes(volume.affine[:, [2, 1, 0, 3]])) == case["axcodes"]


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file())


def test_jpeg2000_ct_series_has_the_simpleitk_geometry(tmp_path, shared_data):
    (volume,) = read_upload(
        _dicom_files(shared_data / "dicom/ct_series_20slice/dicom"), tmp_path / "work", ImportLimits()
    ).volumes
    assert volume.shape == (20, 512, 512)
    assert volume.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert volume.array.dtype == np.int16 and volume.modality == "CT"
    # SimpleITK: origin (LPS) [-249.51171875, -437.51171875, -804.5], identity direction
    assert volume.affine[:3, 3] == pytest.approx([249.51171875, 437.51171875, -804.5])
    expected = np.zeros((3, 3))
    expected[0, 2], expected[1, 1], expected[2, 0] = -0.9765625, -0.9765625, 2.0
    np.testing.assert_allclose(volume.affine[:3, :3], expected)
    # air around the patient, soft tissue and bone inside
    assert volume.array.min() <= -1000 and volume.array.max() > 1000
    assert len(volume.source_meta["sop_instance_uids"]) == 20 and all(volume.source_meta["sop_instance_uids"])
    assert volume.source_meta["uids_from_file_meta"] is True  # the anonymiser blanked the dataset UIDs


def test_three_slice_ct_series_imports(tmp_path, shared_data):
    (volume,) = read_upload(
        _dicom_files(shared_data / "dicom/dcmqi_ct3slice/ct"), tmp_path / "work", ImportLimits()
    ).volumes
    assert volume.shape == (3, 512, 512)
    assert volume.spacing == pytest.approx((1.0, 0.810547, 0.810547))


def _direction_from_readme(values: list[float]) -> np.ndarray:
    """ITK direction (row-major 3x3, LPS; columns = row cosine, column cosine, normal)."""
    return np.asarray(values).reshape(3, 3)


@pytest.mark.parametrize(
    ("folder", "shape", "spacing", "direction", "dtype"),
    [
        (
            "Study3_11-T1post-18670",
            (22, 320, 280),
            (6.5, 0.6875, 0.6875),
            [1.0, 0.0, 0.0003, -0.0, 0.9823, 0.1874, -0.0003, -0.1874, 0.9823],
            np.int16,
        ),
        (
            "Study2_32500-dT1-49467",
            (24, 512, 512),
            (6.5, 0.4297, 0.4297),
            [0.9913, -0.1188, 0.0561, 0.115, 0.9911, 0.0668, -0.0635, -0.0598, 0.9962],
            np.float32,
        ),
    ],
)
def test_oblique_mr_series_has_its_oblique_affine(
    tmp_path, shared_data, folder, shape, spacing, direction, dtype
):
    files = _dicom_files(shared_data / "dicom/mr_series" / folder)
    (volume,) = read_upload(files, tmp_path / "work", ImportLimits()).volumes
    assert volume.shape == shape
    assert volume.spacing == pytest.approx(spacing, abs=1e-3)
    assert volume.array.dtype == dtype and volume.modality == "MR"
    itk_direction = _direction_from_readme(direction)
    ras_from_lps = np.diag([-1.0, -1.0, 1.0])
    # canonical columns are (normal * sz, column cosine * sy, row cosine * sx)
    expected_columns = ras_from_lps @ itk_direction[:, [2, 1, 0]] * np.asarray(spacing)
    np.testing.assert_allclose(volume.affine[:3, :3], expected_columns, atol=2e-3 * max(spacing))


def test_float_rescale_mr_keeps_non_integer_values(tmp_path, shared_data):
    files = _dicom_files(shared_data / "dicom/mr_series/Study2_32500-dT1-49467")
    (volume,) = read_upload(files, tmp_path / "work", ImportLimits()).volumes
    first = pydicom.dcmread(volume.source_meta["source_files"][0])
    expected = first.pixel_array.astype(np.float64) * float(first.RescaleSlope) + float(
        first.RescaleIntercept
    )
    np.testing.assert_allclose(volume.array[0], expected.astype(np.float32), rtol=1e-6)
    assert not np.allclose(volume.array, np.round(volume.array))


def test_series_with_a_far_away_first_slice_is_refused_as_irregular(tmp_path, shared_data):
    with pytest.raises(VolumeImportError) as caught:
        read_upload(
            _dicom_files(shared_data / "dicom/highdicom_seg/source_ct2"), tmp_path / "work", ImportLimits()
        )
    assert caught.value.code == "irregular_spacing"
    assert "202.500 mm" in caught.value.message


@pytest.mark.parametrize(
    ("relative_path", "code"),
    [
        ("dicom/highdicom_seg/ct_image.dcm", "single_2d_image"),
        ("dicom/rtstruct/ct.0.dcm", "single_2d_image"),
        ("dicom/rtstruct/rtss.dcm", "not_an_image"),
        ("dicom/highdicom_seg/seg_image_ct_binary.dcm", "not_an_image"),
    ],
)
def test_dicom_files_that_are_not_a_3d_image_are_refused(tmp_path, shared_data, relative_path, code):
    with pytest.raises(VolumeImportError) as caught:
        read_upload([shared_data / relative_path], tmp_path / "work", ImportLimits())
    assert caught.value.code == code
    assert Path(relative_path).name in caught.value.message
