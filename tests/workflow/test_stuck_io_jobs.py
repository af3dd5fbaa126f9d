"""Imports and exports whose worker was killed mid-run do not stay 'running' forever.

A killed worker stops refreshing ``heartbeat_at``. The next status read (or an io worker's sweeper) queues the
job once more, and fails it with a reason the second time. Cases an import already saved are kept and never
created twice.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from annotator.models import Case, CaseStatus, ExportJob, ImportJob
from annotator.services import cases, exports, imports, storage
from annotator.tasks import sweep_stale_io_jobs
from tests.conftest import phantom_volume

pytestmark = pytest.mark.usefixtures("celery_eager")


class _WorkerKilled(BaseException):
    """Stands for SIGKILL: nothing after it runs, no ``except Exception`` and no cleanup of the import."""


def _nifti_upload(name: str, seed: int) -> SimpleUploadedFile:
    data = phantom_volume((5, 16, 18), seed=seed).transpose(2, 1, 0)
    image = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]))
    return SimpleUploadedFile(name, gzip.compress(image.to_bytes()))


def _make_stale(model, job_id: int, attempts: int) -> None:
    model.objects.filter(pk=job_id).update(
        status="running",
        attempts=attempts,
        started_at=timezone.now() - timedelta(minutes=10),
        heartbeat_at=timezone.now() - timedelta(minutes=5),
    )


def _import_killed_after_first_case(team, monkeypatch) -> ImportJob:
    """An import of three files whose worker died right after saving the first case."""
    job = imports.create_import_job(
        team.manager,
        team.project,
        [_nifti_upload(f"patient{i}.nii.gz", seed=i) for i in range(3)],
        enqueue=False,
    )
    assert imports._claim(job.pk)
    real_create = cases.create_case_with_volume

    def create_then_die(*args, **kwargs):
        case = real_create(*args, **kwargs)
        if Case.objects.filter(imported_from=job).count() == 1:
            raise _WorkerKilled()
        return case

    monkeypatch.setattr(cases, "create_case_with_volume", create_then_die)
    work_dir = Path(tempfile.mkdtemp())
    with pytest.raises(_WorkerKilled):
        imports._import(ImportJob.objects.get(pk=job.pk), work_dir)
    shutil.rmtree(work_dir)
    monkeypatch.setattr(cases, "create_case_with_volume", real_create)
    return job


def test_an_import_whose_worker_died_runs_again_without_duplicating_saved_cases(
    team, api_client, monkeypatch, django_capture_on_commit_callbacks
):
    job = _import_killed_after_first_case(team, monkeypatch)
    _make_stale(ImportJob, job.pk, attempts=1)
    client = api_client(team.manager)

    with django_capture_on_commit_callbacks(execute=True):
        polled = client.get(f"/api/imports/{job.pk}/").json()
    assert polled["status"] == "queued", polled

    finished = client.get(f"/api/imports/{job.pk}/").json()
    assert finished["status"] == "succeeded", finished
    assert sorted(case["name"] for case in finished["cases"]) == ["patient0", "patient1", "patient2"]
    assert Case.objects.filter(project=team.project).count() == 3
    assert ImportJob.objects.get(pk=job.pk).attempts == 2


def test_an_import_whose_worker_died_twice_fails_and_says_to_upload_again(
    team, api_client, stored_files, django_capture_on_commit_callbacks
):
    job = imports.create_import_job(
        team.manager, team.project, [_nifti_upload("patient0.nii.gz", seed=0)], enqueue=False
    )
    _make_stale(ImportJob, job.pk, attempts=2)

    with django_capture_on_commit_callbacks(execute=True):
        polled = api_client(team.manager).get(f"/api/imports/{job.pk}/").json()

    assert polled["status"] == "failed", polled
    assert polled["error"] == "The worker stopped while importing; upload again."
    assert polled["error_code"] == "worker_lost"
    assert not [name for name in stored_files() if name.startswith(job.upload_dir)]


def test_an_import_that_lost_its_worker_twice_keeps_and_lists_the_cases_it_saved(team, monkeypatch):
    job = _import_killed_after_first_case(team, monkeypatch)
    _make_stale(ImportJob, job.pk, attempts=2)

    assert sweep_stale_io_jobs()["imports_failed"] == [job.pk]

    job.refresh_from_db()
    assert job.status == "partial"
    assert "1 case was imported" in job.error and "upload the remaining files again" in job.error
    assert [case.name for case in job.cases.all()] == ["patient0"]


def test_a_running_import_with_a_fresh_heartbeat_is_left_alone(team, api_client):
    job = imports.create_import_job(
        team.manager, team.project, [_nifti_upload("patient0.nii.gz", seed=0)], enqueue=False
    )
    assert imports._claim(job.pk)

    polled = api_client(team.manager).get(f"/api/imports/{job.pk}/").json()

    assert polled["status"] == "running" and polled["error"] == ""
    assert sweep_stale_io_jobs() == {
        "imports_retried": [],
        "imports_failed": [],
        "exports_retried": [],
        "exports_failed": [],
    }


def _approved(make_case, team) -> Case:
    case = make_case(team.project, name="one", assignee=team.annotator)
    Case.objects.filter(pk=case.pk).update(status=CaseStatus.APPROVED)
    return case


def test_an_export_whose_worker_died_runs_again_and_produces_its_zip(
    team, make_case, api_client, django_capture_on_commit_callbacks
):
    _approved(make_case, team)
    job = exports.create_export_job(team.manager, team.project, "nifti", enqueue=False)
    _make_stale(ExportJob, job.pk, attempts=1)
    client = api_client(team.manager)

    with django_capture_on_commit_callbacks(execute=True):
        polled = client.get(f"/api/exports/{job.pk}/").json()
    assert polled["status"] == "queued", polled

    finished = client.get(f"/api/exports/{job.pk}/").json()
    assert finished["status"] == "succeeded", finished
    assert finished["error"] == ""
    assert storage.local_path(ExportJob.objects.get(pk=job.pk).file.name).is_file()


def test_an_export_whose_worker_died_twice_fails_and_says_to_export_again(team, make_case, api_client):
    _approved(make_case, team)
    job = exports.create_export_job(team.manager, team.project, "nifti", enqueue=False)
    _make_stale(ExportJob, job.pk, attempts=2)

    polled = api_client(team.manager).get(f"/api/exports/{job.pk}/").json()

    assert polled["status"] == "failed", polled
    assert polled["error"] == "The worker stopped while exporting; export again."
    assert polled["download_url"] is None


def test_a_running_export_with_a_fresh_heartbeat_is_left_alone(team, make_case, api_client):
    _approved(make_case, team)
    job = exports.create_export_job(team.manager, team.project, "nifti", enqueue=False)
    assert exports._claim(job.pk)

    polled = api_client(team.manager).get(f"/api/exports/{job.pk}/").json()

    assert polled["status"] == "running" and polled["error"] == ""


def test_the_import_and_export_lists_show_a_dead_workers_jobs_as_failed(team, make_case, api_client):
    _approved(make_case, team)
    export = exports.create_export_job(team.manager, team.project, "nifti", enqueue=False)
    upload = imports.create_import_job(
        team.manager, team.project, [_nifti_upload("patient0.nii.gz", seed=0)], enqueue=False
    )
    _make_stale(ExportJob, export.pk, attempts=2)
    _make_stale(ImportJob, upload.pk, attempts=2)
    client = api_client(team.manager)

    imported = client.get(f"/api/projects/{team.project.pk}/imports/").json()
    exported = client.get(f"/api/projects/{team.project.pk}/exports/").json()

    assert [(job["id"], job["status"]) for job in imported] == [(upload.pk, "failed")]
    assert [(job["id"], job["status"]) for job in exported] == [(export.pk, "failed")]
