"""Importing real images through the API: NIfTI, DICOM (zip and loose files), NRRD, with label files.

The io task runs in-process (``celery_eager``) when the upload request commits: the same service code the
worker runs, without a broker. Files come from ../shared/data and the tests skip when it is absent.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.api.helpers import as_upload, finished_job, path_upload, post_import

pytestmark = [pytest.mark.shared_data, pytest.mark.usefixtures("celery_eager")]


def _zip_of(paths: list[Path], prefix: str = "") -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            archive.write(path, f"{prefix}{path.name}")
    buffer.seek(0)
    buffer.name = "series.zip"
    return buffer


def _case_for(client, job):
    assert len(job["cases"]) == 1, job
    case_id = job["cases"][0]["id"]
    return client.get(f"/api/cases/{case_id}/").json(), client.get(f"/api/cases/{case_id}/volume/").json()


def _current_labels(client, case) -> np.ndarray:
    import gzip

    revision_id = case["current_revision"]
    response = client.get(f"/api/cases/{case['id']}/revisions/{revision_id}/labels/")
    data = gzip.decompress(b"".join(response.streaming_content))
    return np.frombuffer(data, dtype=np.uint8).reshape(case["volume"]["shape"])


NIFTI_CASES = [
    ("Dataset001_Hippocampus", "hippocampus_001", None),
    ("Dataset002_LeftAtrium", None, None),
    # TotalSegmentator ids translated to the project's classes (5 liver -> 1, 1 spleen -> 2), others dropped.
    ("Dataset003_TotalSegmentatorCT", "totalseg_example_ct_sm", {"5": 1, "1": 2}),
    ("Dataset004_TotalSegmentatorMR", "totalseg_example_mr_sm", {"5": 1, "1": 2}),
]


@pytest.mark.parametrize(("dataset", "case_name", "value_map"), NIFTI_CASES, ids=[c[0] for c in NIFTI_CASES])
def test_nifti_case_imports_with_its_label_on_the_same_grid(
    shared_data, team, api_client, django_capture_on_commit_callbacks, dataset, case_name, value_map
):
    folder = shared_data / dataset
    image_path = sorted((folder / "imagesTr").glob(f"{case_name or ''}*_0000.nii.gz"))[0]
    label_path = folder / "labelsTr" / image_path.name.replace("_0000.nii.gz", ".nii.gz")
    client = api_client(team.manager)
    fields = (
        {"label_value_map": __import__("json").dumps(value_map), "drop_unmapped_labels": True}
        if value_map
        else {}
    )

    response = post_import(
        client, team.project, [path_upload(image_path)], django_capture_on_commit_callbacks,
        label=path_upload(label_path), **fields,
    )  # fmt: skip
    job = finished_job(client, response)

    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0
    case, volume = _case_for(client, job)
    image = nib.load(image_path)
    # Canonical (Z, Y, X) = NIfTI (i, j, k) reversed; spacing likewise; affine columns reversed.
    assert volume["shape"] == list(image.shape[::-1])
    assert volume["spacing"] == pytest.approx([float(v) for v in image.header.get_zooms()[::-1]])
    expected_affine = image.affine[:, [2, 1, 0, 3]]
    assert np.allclose(volume["affine"], expected_affine, atol=1e-4)
    assert case["name"].startswith(image_path.name.removesuffix("_0000.nii.gz"))

    expected_labels = np.asarray(nib.load(label_path).dataobj).astype(np.int64).transpose(2, 1, 0)
    if value_map:
        lookup = np.zeros(256, dtype=np.uint8)
        for source, target in value_map.items():
            lookup[int(source)] = target
        expected_labels = lookup[expected_labels]
    assert np.array_equal(_current_labels(client, case), expected_labels)
    revision = client.get(f"/api/cases/{case['id']}/revisions/{case['current_revision']}/").json()
    counts = np.bincount(expected_labels.ravel(), minlength=3)
    assert revision["label_counts"] == {str(v): int(counts[v]) for v in range(1, counts.size) if counts[v]}
    assert revision["source"] == "import"


def test_dicom_zip_and_its_direction_flipped_nifti_label_line_up_voxel_for_voxel(
    shared_data, team, api_client, django_capture_on_commit_callbacks, settings
):
    series = shared_data / "dicom" / "ct_series_20slice"
    client = api_client(team.manager)

    response = post_import(
        client,
        team.project,
        [_zip_of(sorted((series / "dicom").iterdir()), prefix="study/")],
        django_capture_on_commit_callbacks,
        label=path_upload(series / "example_seg_dicom.nii.gz"),
        label_value_map='{"5": 1}',
        drop_unmapped_labels=True,
    )
    job = finished_job(client, response)

    assert job["status"] == "succeeded", job
    case, volume = _case_for(client, job)
    assert volume["shape"] == [20, 512, 512]
    assert volume["spacing"] == pytest.approx([2.0, 0.9766, 0.9766], abs=1e-3)
    assert volume["modality"] == "CT" and volume["source_format"] == "dicom"
    from annotator.models import Volume
    from annotator.services.cases import read_volume_array

    stored = Volume.objects.get(case_id=case["id"])
    hu = read_volume_array(stored)
    liver = _current_labels(client, case) == 1
    # DICOM README: mean HU inside the liver is 89 when aligned in physical space, -75 when overlaid naively.
    assert 80 < float(hu[liver].mean()) < 100
    # The DICOM files stay in media for DICOM SEG export, one per z, in z order.
    source_files = stored.source_meta["source_files"]
    assert len(source_files) == 20
    assert all((Path(settings.MEDIA_ROOT) / name).is_file() for name in source_files)


def test_loose_dicom_files_import_with_an_nrrd_label(
    shared_data, team, api_client, django_capture_on_commit_callbacks
):
    folder = shared_data / "dicom" / "dcmqi_ct3slice"
    client = api_client(team.manager)
    # Upload order deliberately reversed: slices are sorted by position, never by file name.
    files = [path_upload(path) for path in sorted((folder / "ct").glob("*.dcm"), reverse=True)]

    response = post_import(
        client,
        team.project,
        files,
        django_capture_on_commit_callbacks,
        label=path_upload(folder / "nrrd" / "liver_seg.nrrd"),
    )
    job = finished_job(client, response)

    assert job["status"] == "succeeded", job
    case, volume = _case_for(client, job)
    assert volume["shape"] == [3, 512, 512]
    revision = client.get(f"/api/cases/{case['id']}/revisions/{case['current_revision']}/").json()
    assert revision["label_counts"] == {"1": 107098}


def test_nrrd_image_imports(shared_data, team, api_client, django_capture_on_commit_callbacks):
    client = api_client(team.manager)
    nrrd_path = shared_data / "dicom" / "dcmqi_ct3slice" / "nrrd" / "heart_seg.nrrd"

    job = finished_job(
        client,
        post_import(client, team.project, [path_upload(nrrd_path)], django_capture_on_commit_callbacks),
    )

    assert job["status"] == "succeeded", job
    _, volume = _case_for(client, job)
    assert volume["shape"] == [3, 512, 512]
    assert volume["source_format"] == "nrrd"


def test_two_series_in_one_zip_become_two_cases(
    shared_data, team, api_client, django_capture_on_commit_callbacks
):
    mr = shared_data / "dicom" / "mr_series"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for series in sorted(mr.iterdir()):
            for path in sorted(series.iterdir()):
                archive.write(path, f"{series.name}/{path.name}")
    client = api_client(team.manager)

    job = finished_job(
        client,
        post_import(
            client, team.project, [as_upload("mr.zip", buffer.getvalue())], django_capture_on_commit_callbacks
        ),
    )

    assert job["status"] == "succeeded", job
    shapes = sorted(client.get(f"/api/cases/{c['id']}/volume/").json()["shape"][0] for c in job["cases"])
    assert shapes == [22, 24]
    dtypes = {client.get(f"/api/cases/{c['id']}/volume/").json()["dtype"] for c in job["cases"]}
    # The dT1 series carries a non-integer rescale slope: its voxels must stay float.
    assert "float32" in dtypes


def test_a_bad_file_is_reported_without_aborting_the_good_ones(
    shared_data, team, api_client, django_capture_on_commit_callbacks
):
    image = sorted((shared_data / "Dataset001_Hippocampus" / "imagesTr").iterdir())[0]
    client = api_client(team.manager)

    job = finished_job(
        client,
        post_import(
            client,
            team.project,
            [path_upload(image), as_upload("notes.txt", b"this is not an image\n" * 20)],
            django_capture_on_commit_callbacks,
        ),
    )

    assert job["status"] == "partial"
    assert len(job["cases"]) == 1
    assert [error["name"] for error in job["file_errors"]] == ["notes.txt"]
    assert job["file_errors"][0]["message"]


def test_an_import_writes_an_audit_trail(shared_data, team, api_client, django_capture_on_commit_callbacks):
    from annotator.models import AuditEvent

    image = sorted((shared_data / "Dataset001_Hippocampus" / "imagesTr").iterdir())[0]
    client = api_client(team.manager)
    finished_job(
        client, post_import(client, team.project, [path_upload(image)], django_capture_on_commit_callbacks)
    )

    verbs = list(
        AuditEvent.objects.filter(project=team.project).order_by("id").values_list("verb", flat=True)
    )
    assert verbs == ["import.queued", "case.created", "import.succeeded"]
    assert AuditEvent.objects.filter(verb="import.queued", actor=team.manager).exists()
