"""Bad uploads (issue 2, "Bad input"): each gets a clear message, a failed ImportJob with the reason, and
leaves no case, volume, revision or stored file behind."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.api.helpers import as_upload, finished_job, path_upload, post_import

pytestmark = pytest.mark.usefixtures("celery_eager")


def _nifti(data: np.ndarray, name: str = "image.nii.gz", affine: np.ndarray | None = None) -> io.BytesIO:
    image = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    path_bytes = nib.Nifti1Image.to_bytes(image)
    if name.endswith(".gz"):
        import gzip

        path_bytes = gzip.compress(path_bytes)
    return as_upload(name, path_bytes)


def _png() -> io.BytesIO:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(buffer, format="PNG")
    return as_upload("slice.png", buffer.getvalue())


def _zip(entries: dict[str, bytes], name: str = "upload.zip") -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry, data in entries.items():
            archive.writestr(entry, data)
    return as_upload(name, buffer.getvalue())


def _volume(shape: tuple[int, int, int] = (16, 16, 8)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.int16).reshape(shape) % 300


def assert_nothing_imported(stored_files) -> None:
    from annotator.models import Case, SegmentationRevision, Volume

    assert Case.objects.count() == 0
    assert Volume.objects.count() == 0
    assert SegmentationRevision.objects.count() == 0
    assert stored_files() == []


def _failed_import(client, project, files, capture, **kwargs) -> dict:
    job = finished_job(client, post_import(client, project, files, capture, **kwargs))
    assert job["status"] == "failed", job
    assert job["error"], job
    assert job["cases"] == []
    return job


SYNTHETIC_BAD_UPLOADS = {
    "non-image file": (
        lambda: [as_upload("report.pdf", b"%PDF-1.4 not really an image" * 10)],
        "not_an_image",
    ),
    "single 2D picture": (lambda: [_png()], "single_2d_image"),
    "single 2D NIfTI slice": (lambda: [_nifti(np.zeros((32, 32, 1), dtype=np.int16))], "single_2d_image"),
    "4D NIfTI": (lambda: [_nifti(np.zeros((8, 8, 8, 3), dtype=np.int16))], "four_d"),
    "NaN voxels": (lambda: [_nifti(np.where(_volume() > 100, np.nan, 1.0).astype(np.float32))], "non_finite"),
    "inf voxels": (lambda: [_nifti(np.where(_volume() > 100, np.inf, 1.0).astype(np.float32))], "non_finite"),
    "truncated NIfTI": (
        lambda: [as_upload("cut.nii", nib.Nifti1Image(_volume(), np.eye(4)).to_bytes()[:600])],
        None,
    ),
    "zip with ../ path": (lambda: [_zip({"../../evil.nii": b"x" * 100})], "zip_path_traversal"),
    # 64 MB of zeros deflate to ~60 kB: a ratio around 1000 is refused before anything is extracted.
    "zip bomb": (lambda: [_zip({"zeros.nii": bytes(64 * 1024**2)})], "zip_bomb"),
}


@pytest.mark.parametrize("case", list(SYNTHETIC_BAD_UPLOADS), ids=list(SYNTHETIC_BAD_UPLOADS))
def test_a_bad_upload_fails_with_a_reason_and_leaves_nothing_behind(
    case, team, api_client, django_capture_on_commit_callbacks, stored_files
):
    build, code = SYNTHETIC_BAD_UPLOADS[case]
    client = api_client(team.manager)

    job = _failed_import(client, team.project, build(), django_capture_on_commit_callbacks)

    if code is not None:
        assert job["error_code"] == code, job
    assert_nothing_imported(stored_files)


def test_an_upload_over_the_size_limit_is_refused_with_413(
    team, api_client, settings, django_capture_on_commit_callbacks, stored_files
):
    from annotator.models import ImportJob

    settings.PROPLABEL_MAX_UPLOAD_BYTES = 10_000
    client = api_client(team.manager)

    response = post_import(
        client, team.project, [_nifti(_volume((64, 64, 8)), "big.nii")], django_capture_on_commit_callbacks
    )

    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    job = ImportJob.objects.get()
    assert (job.status, job.error_code) == ("failed", "too_large")
    assert_nothing_imported(stored_files)


def test_an_upload_without_files_is_refused_with_400(team, api_client, django_capture_on_commit_callbacks):
    client = api_client(team.manager)

    response = post_import(client, team.project, [], django_capture_on_commit_callbacks)

    assert response.status_code == 400
    assert response.json()["code"] == "nothing_to_import"


def test_a_label_file_on_another_grid_is_refused(
    team, api_client, django_capture_on_commit_callbacks, stored_files
):
    client = api_client(team.manager)
    label = np.zeros((16, 16, 9), dtype=np.uint8)

    job = _failed_import(
        client,
        team.project,
        [_nifti(_volume((16, 16, 8)))],
        django_capture_on_commit_callbacks,
        label=_nifti(label, "label.nii.gz"),
    )

    assert job["error_code"] == "label_grid_mismatch"
    assert_nothing_imported(stored_files)


def test_a_label_file_with_unknown_values_is_refused(
    team, api_client, django_capture_on_commit_callbacks, stored_files
):
    client = api_client(team.manager)
    label = np.zeros((16, 16, 8), dtype=np.uint8)
    label[2:5, 2:5, 2:5] = 7  # the project only has the values 1 and 2

    job = _failed_import(
        client,
        team.project,
        [_nifti(_volume((16, 16, 8)))],
        django_capture_on_commit_callbacks,
        label=_nifti(label, "label.nii.gz"),
    )

    assert job["error_code"] == "label_unknown_values"
    assert "7" in job["error"]
    assert_nothing_imported(stored_files)


def test_a_label_value_map_pointing_to_no_class_is_refused_before_upload(
    team, api_client, django_capture_on_commit_callbacks, stored_files
):
    client = api_client(team.manager)

    response = post_import(
        client,
        team.project,
        [_nifti(_volume())],
        django_capture_on_commit_callbacks,
        label=_nifti(np.zeros((16, 16, 8), dtype=np.uint8), "label.nii.gz"),
        label_value_map='{"5": 9}',
    )

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_label_map"
    assert_nothing_imported(stored_files)


# --- DICOM (needs real DICOM files from ../shared/data) -----------------------------------------------------


def _ct_slices(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "dicom" / "dcmqi_ct3slice" / "ct").glob("*.dcm"))


@pytest.mark.shared_data
def test_truncated_dicom_files_fail_with_a_reason(
    shared_data, team, api_client, django_capture_on_commit_callbacks, stored_files
):
    client = api_client(team.manager)
    files = [
        as_upload(path.name, path.read_bytes()[: path.stat().st_size // 2])
        for path in _ct_slices(shared_data)
    ]

    job = _failed_import(client, team.project, files, django_capture_on_commit_callbacks)

    assert job["error_code"] == "corrupt_dicom"
    assert_nothing_imported(stored_files)


@pytest.mark.shared_data
def test_garbage_with_a_dicom_name_fails_with_a_reason(
    team, api_client, django_capture_on_commit_callbacks, stored_files
):
    client = api_client(team.manager)
    garbage = b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI" + bytes(range(256)) * 4

    job = _failed_import(
        client, team.project, [as_upload("IM0001.dcm", garbage)], django_capture_on_commit_callbacks
    )

    assert job["error_code"] in {"corrupt_dicom", "not_an_image"}
    assert_nothing_imported(stored_files)


@pytest.mark.shared_data
def test_a_series_whose_slices_disagree_is_refused(
    shared_data, team, api_client, django_capture_on_commit_callbacks, stored_files, tmp_path
):
    import pydicom

    files = []
    for index, path in enumerate(_ct_slices(shared_data)):
        dataset = pydicom.dcmread(path)
        if index == 2:
            # Same series, but this slice has half the matrix size: a mixed series.
            half = dataset.pixel_array[::2, ::2].copy()
            dataset.Rows, dataset.Columns = half.shape
            dataset.PixelData = half.tobytes()
        buffer = io.BytesIO()
        dataset.save_as(buffer)
        files.append(as_upload(path.name, buffer.getvalue()))
    client = api_client(team.manager)

    job = _failed_import(client, team.project, files, django_capture_on_commit_callbacks)

    assert job["error_code"] == "mixed_series"
    assert_nothing_imported(stored_files)


@pytest.mark.shared_data
def test_a_corrupt_file_next_to_a_good_series_does_not_leave_half_a_case(
    shared_data, team, api_client, django_capture_on_commit_callbacks, stored_files
):
    """The good series imports completely; the bad file is listed; no stray files remain beyond the case's."""
    client = api_client(team.manager)
    good = [path_upload(path) for path in _ct_slices(shared_data)]

    job = finished_job(
        client,
        post_import(
            client,
            team.project,
            [*good, as_upload("broken.nii.gz", b"\x1f\x8b broken")],
            django_capture_on_commit_callbacks,
        ),
    )

    assert job["status"] == "partial"
    assert [error["name"] for error in job["file_errors"]] == ["broken.nii.gz"]
    files = stored_files()
    assert [name for name in files if name.startswith("volumes/")] != []
    assert [name for name in files if name.startswith("uploads/")] == []


def test_failure_messages_name_files_not_server_folders(
    team, api_client, django_capture_on_commit_callbacks, settings
):
    client = api_client(team.manager)
    files = [as_upload("a.nii.gz", b"\x1f\x8b broken"), as_upload("b.nii", b"\x5c\x01" + b"\x00" * 400)]

    job = _failed_import(client, team.project, files, django_capture_on_commit_callbacks)

    texts = [job["error"], *(error["message"] for error in job["file_errors"])]
    assert not any(str(settings.MEDIA_ROOT) in text or "/uploads/" in text for text in texts), job
    assert "a.nii.gz" in job["error"] or "b.nii" in job["error"]
