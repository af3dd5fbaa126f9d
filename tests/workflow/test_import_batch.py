"""A manager uploads several cases at once: progress is visible while the import runs, bad files are
listed by name, and the good files still become cases."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from annotator.services import imports
from tests.api.helpers import as_upload, finished_job, post_import
from tests.conftest import phantom_volume

pytestmark = pytest.mark.usefixtures("celery_eager")


def _nifti_bytes(seed: int) -> bytes:
    data = phantom_volume((5, 16, 18), seed=seed).transpose(2, 1, 0)
    image = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]))
    return gzip.compress(image.to_bytes())


def test_several_files_import_with_live_progress_and_per_file_errors(
    team, api_client, django_capture_on_commit_callbacks, monkeypatch
):
    client = api_client(team.manager)
    seen: list[tuple[str, float]] = []
    original = imports._ProgressWriter.__call__

    def watch(self, fraction):
        original(self, fraction)
        # What the import page's poller would see at this moment.
        job = client.get(f"/api/imports/{self.job_id}/").json()
        seen.append((job["status"], job["progress"]))

    monkeypatch.setattr(imports, "_PROGRESS_INTERVAL_SECONDS", 0.0)
    monkeypatch.setattr(imports._ProgressWriter, "__call__", watch)
    good = [as_upload(f"patient{i}.nii.gz", _nifti_bytes(i)) for i in range(3)]
    truncated = as_upload("patient9.nii.gz", _nifti_bytes(9)[:200])
    text = as_upload("notes.txt", b"not an image\n" * 10)

    response = post_import(
        client, team.project, [good[0], truncated, good[1], text, good[2]], django_capture_on_commit_callbacks
    )
    job = finished_job(client, response)

    assert job["status"] == "partial", job
    assert sorted(case["name"] for case in job["cases"]) == ["patient0", "patient1", "patient2"]
    assert sorted(error["name"] for error in job["file_errors"]) == ["notes.txt", "patient9.nii.gz"]
    assert all(error["message"] for error in job["file_errors"])
    assert job["progress"] == 1.0
    running = [progress for status, progress in seen if status == "running"]
    assert len(running) >= 3, seen
    assert running == sorted(running) and 0 < running[0] < 1


def test_an_upload_where_every_file_is_bad_fails_and_names_them(
    team, api_client, django_capture_on_commit_callbacks
):
    client = api_client(team.manager)
    files = [as_upload("a.nii.gz", b"\x1f\x8b broken"), as_upload("b.dcm", b"DICM" * 10)]
    job = finished_job(client, post_import(client, team.project, files, django_capture_on_commit_callbacks))
    assert job["status"] == "failed", job
    assert job["cases"] == []
    assert {error["name"] for error in job["file_errors"]} == {"a.nii.gz", "b.dcm"}, job
    assert job["error"] and "/uploads/" not in job["error"]  # no server paths in messages


def test_import_page_polls_the_import_job_and_lists_file_errors(
    team, client, django_capture_on_commit_callbacks
):
    """The manager's import screen wires the upload to the API and shows progress per job."""
    client.force_login(team.manager)
    page = client.get(f"/manage/projects/{team.project.pk}/import/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'type="file"' in html and "multiple" in html
    assert f"/api/projects/{team.project.pk}/imports/" in html
    assert "/api/imports/" in html and "file_errors" in html
