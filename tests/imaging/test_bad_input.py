"""Every kind of bad upload gets a clear message, a stable code, and leaves nothing behind."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from annotator.imaging import ImportLimits, VolumeImportError, align_label, read_upload


def _leftover_files(work_dir: Path) -> list[Path]:
    return [path for path in work_dir.rglob("*") if path.is_file()] if work_dir.exists() else []


def _import_error(paths: list[Path], work_dir: Path, limits: ImportLimits | None = None) -> VolumeImportError:
    with pytest.raises(VolumeImportError) as caught:
        read_upload(paths, work_dir, limits or ImportLimits())
    assert _leftover_files(work_dir) == []
    return caught.value


def test_text_file_is_not_an_image(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("patient notes, not an image\n" * 20)
    error = _import_error([notes], tmp_path / "work")
    assert error.code == "not_an_image"
    assert "notes.txt" in error.message


def test_png_is_refused_as_a_single_2d_image(tmp_path):
    picture = tmp_path / "screenshot.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(picture)
    error = _import_error([picture], tmp_path / "work")
    assert error.code == "single_2d_image"
    assert "screenshot.png" in error.message


def test_2d_nifti_is_refused_as_a_single_2d_image(tmp_path, write_nifti):
    path = write_nifti(tmp_path / "slice.nii.gz", np.zeros((32, 32, 1), dtype=np.int16))
    assert _import_error([path], tmp_path / "work").code == "single_2d_image"


def test_4d_nifti_is_refused(tmp_path, write_nifti):
    path = write_nifti(tmp_path / "fmri.nii.gz", np.zeros((8, 8, 6, 3), dtype=np.int16))
    error = _import_error([path], tmp_path / "work")
    assert error.code == "four_d"
    assert "fmri.nii.gz" in error.message and "4D" in error.message


def test_nifti_with_a_trailing_singleton_fourth_axis_imports_as_3d(tmp_path, write_nifti):
    data = np.arange(8 * 7 * 6, dtype=np.int16).reshape(8, 7, 6, 1)
    path = write_nifti(tmp_path / "vol.nii.gz", data)
    (volume,) = read_upload([path], tmp_path / "work", ImportLimits()).volumes
    np.testing.assert_array_equal(volume.array, data[..., 0].transpose(2, 1, 0))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nifti_with_non_finite_voxels_is_refused(tmp_path, write_nifti, bad_value):
    data = np.zeros((8, 8, 6), dtype=np.float32)
    data[3, 4, 2] = bad_value
    path = write_nifti(tmp_path / "broken.nii.gz", data)
    error = _import_error([path], tmp_path / "work")
    assert error.code == "non_finite"
    assert "broken.nii.gz" in error.message and "1 NaN or infinite" in error.message


def test_truncated_nifti_is_refused(tmp_path, write_nifti):
    data = np.arange(32 * 32 * 16, dtype=np.int16).reshape(32, 32, 16)
    path = write_nifti(tmp_path / "cut.nii", data)
    path.write_bytes(path.read_bytes()[:2000])
    error = _import_error([path], tmp_path / "work")
    assert error.code == "corrupt_file"
    assert "cut.nii" in error.message


def test_upload_over_the_size_limit_is_refused_before_reading(tmp_path, write_nifti):
    path = write_nifti(tmp_path / "big.nii", np.zeros((16, 16, 16), dtype=np.int16))
    error = _import_error([path], tmp_path / "work", ImportLimits(max_upload_bytes=1000))
    assert error.code == "too_large"
    assert "limit" in error.message


def test_volume_over_the_voxel_limit_is_refused(tmp_path, write_nifti):
    path = write_nifti(tmp_path / "big.nii.gz", np.zeros((16, 16, 16), dtype=np.int16))
    error = _import_error([path], tmp_path / "work", ImportLimits(max_voxels=1000))
    assert error.code == "too_large"
    assert "big.nii.gz" in error.message


def _zip_with(tmp_path: Path, name: str, entries: dict[str, bytes]) -> Path:
    archive = tmp_path / name
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as writer:
        for entry_name, payload in entries.items():
            writer.writestr(entry_name, payload)
    return archive


@pytest.mark.parametrize(
    "evil_name", ["../../etc/evil.nii", "/tmp/evil.nii", "a/../../evil.nii", "C:/evil.nii", "..\\evil.nii"]
)
def test_zip_with_paths_leaving_the_folder_is_rejected_before_extracting(tmp_path, evil_name):
    archive = _zip_with(tmp_path, "evil.zip", {"ok/readme.bin": b"x" * 10, evil_name: b"payload"})
    error = _import_error([archive], tmp_path / "work")
    assert error.code == "zip_path_traversal"
    assert "evil.zip" in error.message
    assert not (tmp_path / "evil.nii").exists()


def test_broken_zip_is_reported_as_a_corrupt_archive(tmp_path):
    archive = tmp_path / "series.zip"
    archive.write_bytes(b"PK\x03\x04" + bytes(100))
    error = _import_error([archive], tmp_path / "work")
    assert error.code == "corrupt_archive"
    assert "series.zip" in error.message


def test_zip_with_a_symlink_is_rejected(tmp_path):
    archive = tmp_path / "links.zip"
    with zipfile.ZipFile(archive, "w") as writer:
        link = zipfile.ZipInfo("series/link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        writer.writestr(link, "/etc/passwd")
    assert _import_error([archive], tmp_path / "work").code == "zip_symlink"


def test_zip_bomb_is_rejected_by_its_compression_ratio(tmp_path):
    archive = _zip_with(tmp_path, "bomb.zip", {"zeros.nii": bytes(40 * 1024**2)})
    assert archive.stat().st_size < 100 * 1024  # a 40 MiB entry in a few kB
    error = _import_error([archive], tmp_path / "work")
    assert error.code == "zip_bomb"
    assert "bomb.zip" in error.message


def test_zip_over_the_uncompressed_limit_is_refused(tmp_path):
    archive = _zip_with(tmp_path, "many.zip", {f"f{i}.bin": bytes(1000) for i in range(5)})
    error = _import_error([archive], tmp_path / "work", ImportLimits(max_uncompressed_bytes=3000))
    assert error.code == "too_large"


def test_zip_with_too_many_entries_is_refused(tmp_path):
    archive = _zip_with(tmp_path, "many.zip", {f"f{i}.bin": b"x" for i in range(6)})
    assert _import_error([archive], tmp_path / "work", ImportLimits(max_files=5)).code == "zip_too_many_files"


def test_good_nifti_imports_although_another_file_of_the_upload_is_bad(tmp_path, write_nifti):
    good = write_nifti(tmp_path / "good.nii.gz", np.ones((8, 8, 6), dtype=np.int16))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    result = read_upload([good, bad], tmp_path / "work", ImportLimits())
    assert [volume.name for volume in result.volumes] == ["good"]
    assert [(error.name, error.code) for error in result.errors] == [("bad.nii.gz", "corrupt_file")]


def test_upload_where_every_file_is_bad_names_each_failed_file(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("patient notes, not an image\n" * 20)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b garbage")
    error = _import_error([notes, broken], tmp_path / "work")
    assert "1 other file also failed" in error.message
    assert {(item.name, item.code) for item in error.file_errors} == {
        ("notes.txt", "not_an_image"),
        ("broken.nii.gz", "corrupt_file"),
    }


def test_refusal_of_the_whole_upload_lists_no_file_errors(tmp_path, write_nifti):
    path = write_nifti(tmp_path / "big.nii.gz", np.ones((8, 8, 6), dtype=np.int16))
    error = _import_error([path], tmp_path / "work", ImportLimits(max_upload_bytes=10))
    assert error.code == "too_large"
    assert error.file_errors == []


class TestLabelFiles:
    @pytest.fixture
    def volume(self, tmp_path, write_nifti):
        path = write_nifti(tmp_path / "image.nii.gz", np.zeros((10, 8, 6), dtype=np.int16))
        (volume,) = read_upload([path], tmp_path / "work", ImportLimits()).volumes
        return volume

    def test_label_on_another_grid_is_refused(self, tmp_path, write_nifti, volume):
        label = write_nifti(
            tmp_path / "label.nii.gz", np.zeros((10, 8, 6), dtype=np.uint8), np.diag([1.5, 1.0, 2.5, 1.0])
        )
        with pytest.raises(VolumeImportError) as caught:
            align_label(label, volume, {1})
        assert caught.value.code == "label_grid_mismatch"
        assert "label.nii.gz" in caught.value.message

    def test_label_shifted_by_half_a_voxel_is_refused(self, tmp_path, write_nifti, volume):
        affine = np.diag([1.5, 1.0, 2.0, 1.0])
        affine[0, 3] = 0.75
        label = write_nifti(tmp_path / "label.nii.gz", np.zeros((10, 8, 6), dtype=np.uint8), affine)
        with pytest.raises(VolumeImportError) as caught:
            align_label(label, volume, None)
        assert caught.value.code == "label_grid_mismatch"

    def test_label_of_another_shape_is_refused(self, tmp_path, write_nifti, volume):
        label = write_nifti(tmp_path / "label.nii.gz", np.zeros((10, 8, 5), dtype=np.uint8))
        with pytest.raises(VolumeImportError) as caught:
            align_label(label, volume, None)
        assert caught.value.code == "label_grid_mismatch"

    def test_label_with_unknown_values_is_refused_and_names_them(self, tmp_path, write_nifti, volume):
        data = np.zeros((10, 8, 6), dtype=np.uint8)
        data[1, 1, 1], data[2, 2, 2] = 1, 7
        label = write_nifti(tmp_path / "label.nii.gz", data)
        with pytest.raises(VolumeImportError) as caught:
            align_label(label, volume, {1, 2})
        assert caught.value.code == "label_unknown_values"
        assert "7" in caught.value.message and "label.nii.gz" in caught.value.message
        assert int(align_label(label, volume, {1, 7}).max()) == 7

    def test_label_with_fractional_values_is_refused(self, tmp_path, write_nifti, volume):
        data = np.zeros((10, 8, 6), dtype=np.float32)
        data[1, 1, 1] = 0.5
        label = write_nifti(tmp_path / "probabilities.nii.gz", data)
        with pytest.raises(VolumeImportError) as caught:
            align_label(label, volume, None)
        assert caught.value.code == "label_not_integer"

    def test_label_that_is_not_an_image_is_refused(self, tmp_path, volume):
        label = tmp_path / "label.txt"
        label.write_text("1 2 3")
        with pytest.raises(VolumeImportError) as caught:
            align_label(label, volume, None)
        assert caught.value.code == "not_an_image"

    def test_label_stored_with_flipped_and_permuted_axes_lines_up_exactly(
        self, tmp_path, write_nifti, volume
    ):
        rng = np.random.default_rng(0)
        canonical = rng.integers(0, 3, size=volume.shape).astype(np.uint8)
        # Store it as (j, k, i) with j flipped: a different but equivalent grid of the same points.
        ijk = canonical.transpose(2, 1, 0)
        stored = np.flip(ijk.transpose(1, 2, 0), axis=0)
        affine_ijk = np.asarray(nib.load(str(tmp_path / "image.nii.gz")).affine)
        columns = affine_ijk[:, [1, 2, 0, 3]].copy()
        columns[:3, 3] += columns[:3, 0] * (ijk.shape[1] - 1)
        columns[:3, 0] *= -1
        label = write_nifti(tmp_path / "label.nii.gz", np.ascontiguousarray(stored), columns)
        np.testing.assert_array_equal(align_label(label, volume, {1, 2}), canonical)
