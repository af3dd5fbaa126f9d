"""ZIP of an export folder: complete, safe entry names, written file by file without holding the archive."""

from __future__ import annotations

import os
import tracemalloc
import zipfile

import pytest
from export_builders import PROJECT_LABELS, dicom_source_case, nifti_source_case

from annotator.exporting import ExportError, write_nnunet_dataset, zip_directory


def test_zip_of_an_nnunet_export_holds_every_file_under_the_dataset_folder(tmp_path):
    cases = [
        nifti_source_case("a", (4, 6, 5), seed=1, label_values=[2]),
        dicom_source_case("b", (3, 5, 6), seed=2, label_values=[5]),
    ]
    dataset_dir = write_nnunet_dataset(tmp_path / "export", 4, "Zipped", cases, PROJECT_LABELS)

    zip_path = zip_directory(dataset_dir, tmp_path / "downloads" / "dataset.zip")

    assert zip_path == tmp_path / "downloads" / "dataset.zip"
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.testzip() is None
        names = sorted(archive.namelist())
        assert names == [
            "Dataset004_Zipped/dataset.json",
            "Dataset004_Zipped/imagesTr/a_0000.nii.gz",
            "Dataset004_Zipped/imagesTr/b_0000.nii.gz",
            "Dataset004_Zipped/labelsTr/a.nii.gz",
            "Dataset004_Zipped/labelsTr/b.nii.gz",
        ]
        for name in names:
            original = dataset_dir.parent / name
            assert archive.read(name) == original.read_bytes()
            assert not os.path.isabs(name) and ".." not in name.split("/")
        assert archive.getinfo("Dataset004_Zipped/labelsTr/a.nii.gz").compress_type == zipfile.ZIP_STORED
        assert archive.getinfo("Dataset004_Zipped/dataset.json").compress_type == zipfile.ZIP_DEFLATED
    assert not any(path.name.endswith(".partial") for path in zip_path.parent.iterdir())


def test_zip_memory_stays_far_below_the_size_of_the_archived_data(tmp_path):
    source = tmp_path / "big"
    source.mkdir()
    chunk = os.urandom(1024 * 1024)
    with (source / "volume.raw").open("wb") as handle:
        for _ in range(24):
            handle.write(chunk)
    del chunk

    tracemalloc.start()
    try:
        zip_directory(source, tmp_path / "big.zip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 4 * 1024 * 1024, f"peak Python allocation {peak / 1024**2:.1f} MiB for 24 MiB of data"
    with zipfile.ZipFile(tmp_path / "big.zip") as archive:
        assert archive.getinfo("big/volume.raw").file_size == 24 * 1024 * 1024


def test_zip_refuses_a_symbolic_link_that_could_escape_the_folder(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for download")
    source = tmp_path / "export"
    source.mkdir()
    (source / "dataset.json").write_text("{}")
    (source / "leak.txt").symlink_to(secret)

    with pytest.raises(ExportError, match="symbolic link"):
        zip_directory(source, tmp_path / "export.zip")
    assert not (tmp_path / "export.zip").exists()


def test_zip_refuses_to_write_the_archive_inside_the_folder_it_archives(tmp_path):
    (tmp_path / "dataset.json").write_text("{}")

    with pytest.raises(ExportError, match="must not be written inside"):
        zip_directory(tmp_path, tmp_path / "sub" / "self.zip")
    with pytest.raises(ExportError, match="is not a folder"):
        zip_directory(tmp_path / "missing", tmp_path.parent / "missing.zip")
