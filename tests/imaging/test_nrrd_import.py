"""NRRD volumes (attached and detached headers) import with their world geometry converted to RAS."""

from __future__ import annotations

import nrrd
import numpy as np
import pytest

from annotator.imaging import ImportLimits, VolumeImportError, read_upload


def _header(space: str = "left-posterior-superior") -> dict:
    return {
        "space": space,
        "space directions": np.array([[0.5, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 2.0]]),
        "space origin": np.array([10.0, 20.0, -30.0]),
        "kinds": ["domain", "domain", "domain"],
    }


def test_lps_nrrd_gets_a_ras_affine_and_canonical_axes(tmp_path):
    data = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)  # (i, j, k)
    path = tmp_path / "scan.nrrd"
    nrrd.write(str(path), data, _header(), index_order="F")
    (volume,) = read_upload([path], tmp_path / "work", ImportLimits()).volumes
    assert volume.source_format == "nrrd" and volume.name == "scan"
    np.testing.assert_array_equal(volume.array, data.transpose(2, 1, 0))
    assert volume.spacing == pytest.approx((2.0, 0.6, 0.5))
    # voxel (i=1, j=2, k=1): LPS (10.5, 21.2, -28) -> RAS (-10.5, -21.2, -28)
    assert (volume.affine @ np.array([1, 2, 1, 1.0]))[:3] == pytest.approx([-10.5, -21.2, -28.0])


def test_ras_nrrd_keeps_its_world_coordinates(tmp_path):
    path = tmp_path / "scan.nrrd"
    nrrd.write(str(path), np.zeros((4, 5, 3), dtype=np.float32), _header("right-anterior-superior"))
    (volume,) = read_upload([path], tmp_path / "work", ImportLimits()).volumes
    assert volume.affine[:3, 3] == pytest.approx([10.0, 20.0, -30.0])


def test_detached_header_reads_its_data_file_and_does_not_report_it_separately(tmp_path):
    data = np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3)
    header_path = tmp_path / "scan.nhdr"
    nrrd.write(str(header_path), data, _header(), detached_header=True)
    files = sorted(tmp_path.glob("scan.*"))
    assert len(files) == 2
    result = read_upload(files, tmp_path / "work", ImportLimits())
    assert result.errors == []
    (volume,) = result.volumes
    np.testing.assert_array_equal(volume.array, data.transpose(2, 1, 0))


def test_vector_nrrd_is_refused_as_not_a_single_3d_volume(tmp_path):
    path = tmp_path / "rgb.nrrd"
    header = _header()
    header["kinds"] = ["vector", "domain", "domain", "domain"]
    header["space directions"] = np.vstack([np.full(3, np.nan), _header()["space directions"]])
    nrrd.write(str(path), np.zeros((3, 4, 5, 3), dtype=np.uint8), header, index_order="F")
    with pytest.raises(VolumeImportError) as caught:
        read_upload([path], tmp_path / "work", ImportLimits())
    assert caught.value.code == "four_d"


def test_progress_is_reported_monotonically_up_to_one(make_ct_series, tmp_path, write_nifti):
    reports: list[float] = []
    nifti = write_nifti(tmp_path / "a.nii.gz", np.zeros((6, 6, 4), dtype=np.int16))
    read_upload([*make_ct_series(), nifti], tmp_path / "work", ImportLimits(), progress=reports.append)
    assert reports == sorted(reports)
    assert reports[-1] == 1.0
    assert len(reports) >= 5
