"""DICOM series import on synthetic series: sorting, geometry, rescale, and each refusal."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from annotator.imaging import ImportLimits, VolumeImportError, read_upload


def _files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def test_slices_are_sorted_by_position_not_by_file_name(make_ct_series, tmp_path):
    paths = make_ct_series(shuffle_names=True)
    result = read_upload(paths, tmp_path / "work", ImportLimits())
    (volume,) = result.volumes
    assert result.errors == []
    assert volume.shape == (5, 6, 8)
    # stored 1024 + 10 k, intercept -1024 -> 10 k HU on the k-th slice from the feet up
    assert [int(volume.array[k, 0, 0]) for k in range(5)] == [0, 10, 20, 30, 40]
    positions = [pydicom.dcmread(path).ImagePositionPatient[2] for path in volume.source_meta["source_files"]]
    assert positions == sorted(positions)
    assert volume.source_meta["sop_instance_uids"] == [
        pydicom.dcmread(path).SOPInstanceUID for path in volume.source_meta["source_files"]
    ]


def test_geometry_maps_voxels_to_their_dicom_position_in_ras(make_ct_series, tmp_path):
    (volume,) = read_upload(make_ct_series(), tmp_path / "work", ImportLimits()).volumes
    assert volume.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert volume.array.dtype == np.int16
    assert volume.modality == "CT"
    for k, z_mm in enumerate((0.0, 2.5, 5.0, 7.5, 10.0)):
        # landmark at row 1, column 2: LPS (-10 + 2 * 0.7, -20 + 1 * 0.8, z) -> RAS negates x and y
        world = volume.affine @ np.array([k, 1, 2, 1.0])
        assert world[:3] == pytest.approx([10.0 - 1.4, 20.0 - 0.8, z_mm])
        assert volume.array[k, 1, 2] == 3000 - 1024


def test_non_integer_rescale_gives_float32_with_exact_values(make_ct_series, tmp_path):
    paths = make_ct_series(slope=1.35262501239776, intercept=0.0)
    (volume,) = read_upload(paths, tmp_path / "work", ImportLimits()).volumes
    assert volume.array.dtype == np.float32
    assert volume.array[2, 0, 0] == pytest.approx((1024 + 20) * 1.35262501239776, rel=1e-6)


@pytest.mark.parametrize(
    ("series_options", "code", "words"),
    [
        ({"shift_x_per_slice": 1.0}, "gantry_tilt", "tilt"),
        ({"positions_z": (0.0, 2.5, 5.0, 10.0, 12.5)}, "irregular_spacing", "missing"),
        ({"positions_z": (0.0, 2.5, 3.0, 7.5, 10.0)}, "irregular_spacing", "varies"),
        ({"positions_z": (0.0, 2.5, 2.5, 5.0)}, "duplicate_slices", "same position"),
        ({"positions_z": (0.0,)}, "single_2d_image", "single 2D"),
    ],
)
def test_series_that_cannot_form_a_regular_grid_is_refused_with_its_reason(
    make_ct_series, tmp_path, series_options, code, words
):
    paths = make_ct_series(**series_options)
    with pytest.raises(VolumeImportError) as caught:
        read_upload(paths, tmp_path / "work", ImportLimits())
    assert caught.value.code == code
    assert words in caught.value.message
    assert "IM" in caught.value.message  # names a file of the series


def test_series_mixing_orientations_is_refused(make_ct_series, tmp_path):
    series_uid = "1.2.826.0.1.3680043.8.498.77"
    axial = make_ct_series(folder="mixed", positions_z=(0.0, 2.5, 5.0), series_uid=series_uid)
    localizer = make_ct_series(
        folder="mixed_loc", positions_z=(0.0,), series_uid=series_uid, orientation=(1, 0, 0, 0, 0, -1)
    )
    with pytest.raises(VolumeImportError) as caught:
        read_upload(axial + localizer, tmp_path / "work", ImportLimits())
    assert caught.value.code == "mixed_series"
    assert "orientation" in caught.value.message


def test_two_series_in_one_zip_become_two_volumes(make_ct_series, tmp_path):
    first = make_ct_series(folder="a", description="arterial")
    second = make_ct_series(folder="b", positions_z=(0.0, 3.0, 6.0), description="venous")
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        for path in first + second:
            writer.write(path, f"study/{path.parent.name}/{path.name}")
    result = read_upload([archive], tmp_path / "work", ImportLimits())
    assert sorted((volume.name, volume.shape[0]) for volume in result.volumes) == [
        ("arterial", 5),
        ("venous", 3),
    ]
    assert result.errors == []
    for volume in result.volumes:
        assert all(Path(name).is_file() for name in volume.source_meta["source_files"])


def test_corrupt_series_in_a_zip_is_reported_and_the_good_series_still_imports(make_ct_series, tmp_path):
    good = make_ct_series(folder="good", description="good")
    bad = make_ct_series(folder="bad", description="broken")
    truncated = bad[2]
    truncated.write_bytes(truncated.read_bytes()[:-40])  # pixel data cut short
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        for path in good + bad:
            writer.write(path, f"{path.parent.name}/{path.name}")
    work_dir = tmp_path / "work"
    result = read_upload([archive], work_dir, ImportLimits())
    assert [volume.name for volume in result.volumes] == ["good"]
    (error,) = result.errors
    assert error.code == "corrupt_dicom"
    assert "broken" in error.name
    assert truncated.name in error.message
    # the failed series left nothing behind; the good one's files stay for the caller to copy
    assert {path.parent.name for path in _files_under(work_dir)} == {"good"}
    assert len(_files_under(work_dir)) == 5


def test_truncated_dicom_alone_fails_with_corrupt_dicom(make_ct_series, tmp_path):
    paths = make_ct_series()
    for path in paths:
        path.write_bytes(path.read_bytes()[:200])  # header cut in the middle
    with pytest.raises(VolumeImportError) as caught:
        read_upload(paths, tmp_path / "work", ImportLimits())
    assert caught.value.code == "corrupt_dicom"
    assert "IM" in caught.value.message
