"""write_label_nifti puts a canonical label back onto the SOURCE grid of its image."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from annotator.imaging import ImportLimits, align_label, read_upload, write_label_nifti


def _random_label(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=shape).astype(np.uint8)


def test_nifti_source_gets_its_own_affine_and_axis_order_back(tmp_path, write_nifti):
    # An LPS-ish oblique-free affine with an origin, as a scanner converter would write it.
    affine = np.array([[-0.8, 0, 0, 100.0], [0, -0.7, 0, 80.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
    image_path = write_nifti(tmp_path / "ct.nii.gz", np.zeros((9, 7, 5), dtype=np.int16), affine)
    (volume,) = read_upload([image_path], tmp_path / "work", ImportLimits()).volumes
    label = _random_label(volume.shape)
    out = tmp_path / "label.nii.gz"
    write_label_nifti(label, volume.affine, volume.source_meta, out)
    written = nib.load(str(out))
    source = nib.load(str(image_path))
    assert written.shape == source.shape
    np.testing.assert_array_equal(written.affine, source.affine)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), label.transpose(2, 1, 0))
    np.testing.assert_array_equal(align_label(out, volume, None), label)


def test_dicom_source_label_lands_on_the_dicom_voxels(make_ct_series, tmp_path):
    (volume,) = read_upload(make_ct_series(), tmp_path / "work", ImportLimits()).volumes
    label = _random_label(volume.shape, seed=1)
    out = tmp_path / "label.nii.gz"
    write_label_nifti(label, volume.affine, volume.source_meta, out)
    written = nib.load(str(out))
    assert written.shape == (8, 6, 5)  # (columns, rows, slices)
    # voxel (x=2, y=1, z=3) sits at the DICOM landmark's world position of slice 3 (RAS)
    world = written.affine @ np.array([2, 1, 3, 1.0])
    assert world[:3] == pytest.approx([10.0 - 1.4, 20.0 - 0.8, 7.5])
    np.testing.assert_array_equal(align_label(out, volume, None), label)


@pytest.mark.shared_data
def test_exported_label_of_the_flipped_ct_case_matches_the_original_label_file(shared_data, tmp_path):
    folder = shared_data / "dicom/ct_series_20slice"
    (volume,) = read_upload(sorted((folder / "dicom").iterdir()), tmp_path / "work", ImportLimits()).volumes
    original = folder / "example_seg_dicom.nii.gz"
    label = align_label(original, volume, None)
    out = tmp_path / "export.nii.gz"
    write_label_nifti(label, volume.affine, volume.source_meta, out)
    # Another grid layout than the original file (not y-flipped), same voxels in space.
    np.testing.assert_array_equal(align_label(out, volume, None), label)
    exported, source = nib.load(str(out)), nib.load(str(original))
    centre_original = source.affine @ np.array([100, 200, 10, 1.0])
    index_in_export = np.rint(np.linalg.inv(exported.affine) @ centre_original).astype(int)[:3]
    assert (
        np.asanyarray(exported.dataobj)[tuple(index_in_export)] == np.asanyarray(source.dataobj)[100, 200, 10]
    )


def test_label_with_the_wrong_shape_for_a_nifti_source_is_refused(tmp_path, write_nifti):
    image_path = write_nifti(tmp_path / "ct.nii.gz", np.zeros((9, 7, 5), dtype=np.int16))
    (volume,) = read_upload([image_path], tmp_path / "work", ImportLimits()).volumes
    with pytest.raises(ValueError, match="shape"):
        write_label_nifti(
            np.zeros((5, 7, 8), dtype=np.uint8), volume.affine, volume.source_meta, Path(tmp_path / "x.nii")
        )
