"""Data set exports through the API and the io task: nnU-Net v2, per-case NIfTI, failure cleanup.

The task runs in-process when the request commits (``celery_eager``): the same service the worker runs.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from annotator.models import Case, CaseStatus, ExportJob
from annotator.services import exports, revisions, storage
from tests.api.helpers import finished_job, path_upload, post_import

pytestmark = pytest.mark.usefixtures("celery_eager")


def _label(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Two asymmetric blobs (values 1 and 2), so any flip or transpose changes the voxels."""
    label = np.zeros(shape, dtype=np.uint8)
    z, y, x = shape
    label[1 : z - 2, 2 : y // 2, 3 : x // 2 + seed] = 1
    label[z // 2 :, y // 2 + 1 : y - 1, x // 2 + 2 : x - 1] = 2
    return label


def _approved_case(make_case, team, name: str, seed: int, status: str = CaseStatus.APPROVED) -> Case:
    case = make_case(team.project, name=name, label=_label((6, 20, 24), seed), assignee=team.annotator)
    Case.objects.filter(pk=case.pk).update(status=status)
    case.refresh_from_db()
    return case


def _export(client, project, capture, **body) -> dict:
    with capture(execute=True):
        response = client.post(f"/api/projects/{project.pk}/exports/", body, format="json")
    assert response.status_code == 202, response.content
    job = client.get(f"/api/exports/{response.json()['id']}/").json()
    return job


def _download(client, job: dict, into: Path) -> Path:
    response = client.get(job["download_url"])
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    data = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        archive.extractall(into)
    return into


def _revision_labels(case: Case) -> np.ndarray:
    case.refresh_from_db()
    return revisions.current_label_volume(case)


def test_nnunet_export_of_approved_cases_passes_nnunets_own_integrity_check(
    team, make_case, api_client, django_capture_on_commit_callbacks, tmp_path
):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    approved = [_approved_case(make_case, team, f"liver {i}", seed=i) for i in range(2)]
    _approved_case(make_case, team, "still drawing", seed=3, status=CaseStatus.IN_PROGRESS)
    client = api_client(team.manager)

    job = _export(client, team.project, django_capture_on_commit_callbacks, format="nnunet", dataset_id=42)

    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0 and job["case_count"] == 2
    root = _download(client, job, tmp_path / "unzipped")
    dataset_dir = root / "Dataset042_Liver_study"
    verify_dataset_integrity(str(dataset_dir), num_processes=1)
    meta = json.loads((dataset_dir / "dataset.json").read_text())
    assert meta["numTraining"] == 2  # the in-progress case is not exported by default
    assert meta["labels"] == {"background": 0, "liver": 1, "spleen": 2}
    for case in approved:
        identifier = case.name.replace(" ", "_")
        label_image = nib.load(dataset_dir / "labelsTr" / f"{identifier}.nii.gz")
        image = nib.load(dataset_dir / "imagesTr" / f"{identifier}_0000.nii.gz")
        # Voxel for voxel equal to the approved revision, on the source grid: canonical (Z, Y, X) is the NIfTI
        # (i, j, k) reversed and the affine is the case's with its first three columns reversed.
        exported = np.asarray(label_image.dataobj).transpose(2, 1, 0)
        np.testing.assert_array_equal(exported, _revision_labels(case))
        source_affine = np.asarray(case.volume.affine)[:, [2, 1, 0, 3]]
        np.testing.assert_allclose(label_image.affine, source_affine, atol=1e-5)
        np.testing.assert_allclose(image.affine, source_affine, atol=1e-5)


def test_export_can_include_cases_in_other_statuses(
    team, make_case, api_client, django_capture_on_commit_callbacks, tmp_path
):
    _approved_case(make_case, team, "done", seed=1)
    _approved_case(make_case, team, "waiting", seed=2, status=CaseStatus.SUBMITTED)
    _approved_case(make_case, team, "fresh", seed=3, status=CaseStatus.NEW)
    client = api_client(team.manager)

    job = _export(
        client,
        team.project,
        django_capture_on_commit_callbacks,
        format="nnunet",
        statuses=["approved", "submitted"],
    )

    assert job["status"] == "succeeded", job
    root = _download(client, job, tmp_path / "unzipped")
    (dataset_dir,) = root.iterdir()
    assert sorted(path.name for path in (dataset_dir / "labelsTr").iterdir()) == [
        "done.nii.gz",
        "waiting.nii.gz",
    ]


def test_per_case_nifti_label_maps_match_the_revisions_and_come_with_a_manifest(
    team, make_case, api_client, django_capture_on_commit_callbacks, tmp_path
):
    cases = [_approved_case(make_case, team, name, seed) for seed, name in enumerate(["a/b", "a b", "c"])]
    client = api_client(team.manager)

    job = _export(client, team.project, django_capture_on_commit_callbacks, format="nifti")

    assert job["status"] == "succeeded", job
    root = _download(client, job, tmp_path / "unzipped")
    (folder,) = root.iterdir()
    with (folder / "manifest.csv").open() as handle:
        manifest = list(csv.DictReader(handle))
    assert [row["case_name"] for row in manifest] == ["a/b", "a b", "c"]
    files = [row["file"] for row in manifest]
    assert len(set(files)) == 3  # "a/b" and "a b" sanitise alike; names are made unique
    for case, row in zip(cases, manifest, strict=True):
        exported = np.asarray(nib.load(folder / row["file"]).dataobj).transpose(2, 1, 0)
        np.testing.assert_array_equal(exported, _revision_labels(case))
        assert int(row["revision"]) == case.current_revision.number


def test_progress_climbs_case_by_case_to_one(team, make_case, monkeypatch):
    for seed in range(3):
        _approved_case(make_case, team, f"case {seed}", seed)
    seen: list[float] = []
    original = exports._Progress.__call__

    def spy(self, fraction):
        seen.append(fraction)
        original(self, fraction)

    monkeypatch.setattr(exports._Progress, "__call__", spy)
    job = exports.create_export_job(team.manager, team.project, "nifti", enqueue=False)
    exports.run_export_job(job.pk)

    job.refresh_from_db()
    assert job.status == "succeeded"
    assert len(seen) >= 3 and seen == sorted(seen)
    assert 0 < seen[0] < 1 and job.progress == 1.0


def test_a_failing_export_says_why_and_leaves_no_zip_or_work_folder(team, make_case, settings, stored_files):
    case = _approved_case(make_case, team, "broken", seed=1)
    storage.delete_files([case.current_revision.file.name])  # the label file vanished from disk
    job = exports.create_export_job(team.manager, team.project, "nnunet", enqueue=False)

    exports.run_export_job(job.pk)

    job.refresh_from_db()
    assert job.status == "failed"
    assert "broken" in job.error
    assert not job.file
    assert not [name for name in stored_files() if name.startswith("exports/")]
    work = Path(settings.VAR_DIR) / "work"
    assert not work.exists() or not any(work.iterdir())


def test_a_second_delivery_of_the_same_export_does_nothing(team, make_case):
    _approved_case(make_case, team, "one", seed=1)
    job = exports.create_export_job(team.manager, team.project, "nifti", enqueue=False)
    exports.run_export_job(job.pk)
    job.refresh_from_db()
    first_file, finished = job.file.name, job.finished_at

    exports.run_export_job(job.pk)

    job.refresh_from_db()
    assert (job.file.name, job.finished_at, job.attempts) == (first_file, finished, 1)


def test_export_with_nothing_to_export_is_refused_with_a_reason(team, make_case, api_client):
    _approved_case(make_case, team, "not yet", seed=1, status=CaseStatus.IN_REVIEW)
    response = api_client(team.manager).post(
        f"/api/projects/{team.project.pk}/exports/", {"format": "nnunet"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "nothing_to_export"
    assert not ExportJob.objects.exists()


def test_dicom_seg_export_without_dicom_cases_is_refused(team, make_case, api_client):
    _approved_case(make_case, team, "nifti only", seed=1)
    response = api_client(team.manager).post(
        f"/api/projects/{team.project.pk}/exports/", {"format": "dicom_seg"}, format="json"
    )
    assert response.status_code == 400
    assert "DICOM" in response.json()["detail"]


@pytest.mark.parametrize("who", ["annotator", "reviewer"])
def test_only_managers_export_and_download(team, make_case, api_client, who):
    _approved_case(make_case, team, "one", seed=1)
    job = exports.create_export_job(team.manager, team.project, "nifti", enqueue=False)
    exports.run_export_job(job.pk)
    client = api_client(team.member(who))
    assert (
        client.post(
            f"/api/projects/{team.project.pk}/exports/", {"format": "nifti"}, format="json"
        ).status_code
        == 403
    )
    assert client.get(f"/api/exports/{job.pk}/").status_code == 404
    assert client.get(f"/api/exports/{job.pk}/download/").status_code == 404


def test_download_before_the_export_is_ready_is_not_found(team, make_case, api_client):
    _approved_case(make_case, team, "one", seed=1)
    job = exports.create_export_job(team.manager, team.project, "nifti", enqueue=False)
    response = api_client(team.manager).get(f"/api/exports/{job.pk}/download/")
    assert response.status_code == 404
    assert response.json()["code"] == "export_not_ready"


@pytest.mark.shared_data
def test_nnunet_export_of_imported_hippocampus_cases_equals_the_source_files(
    shared_data, team, api_client, django_capture_on_commit_callbacks, tmp_path
):
    """Import real NIfTI cases with their labels, approve, export: images and labels come back identical."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    folder = shared_data / "Dataset001_Hippocampus"
    client = api_client(team.manager)
    names = ["hippocampus_001", "hippocampus_003"]
    for name in names:
        response = post_import(
            client,
            team.project,
            [path_upload(folder / "imagesTr" / f"{name}_0000.nii.gz")],
            django_capture_on_commit_callbacks,
            label=path_upload(folder / "labelsTr" / f"{name}.nii.gz"),
        )
        assert finished_job(client, response)["status"] == "succeeded"
    Case.objects.filter(project=team.project).update(status=CaseStatus.APPROVED)

    job = _export(
        client,
        team.project,
        django_capture_on_commit_callbacks,
        format="nnunet",
        dataset_id=4,
        dataset_name="Hippo",
    )

    assert job["status"] == "succeeded", job
    dataset_dir = _download(client, job, tmp_path / "unzipped") / "Dataset004_Hippo"
    verify_dataset_integrity(str(dataset_dir), num_processes=1)
    meta = json.loads((dataset_dir / "dataset.json").read_text())
    # MR intensities must not get nnU-Net's CT (HU) normalisation.
    assert meta["channel_names"]["0"] != "CT"
    for exported_id, case_name in meta["case_ids"].items():
        source_name = next(name for name in names if case_name.startswith(name))
        source_label = nib.load(folder / "labelsTr" / f"{source_name}.nii.gz")
        source_image = nib.load(folder / "imagesTr" / f"{source_name}_0000.nii.gz")
        label = nib.load(dataset_dir / "labelsTr" / f"{exported_id}.nii.gz")
        image = nib.load(dataset_dir / "imagesTr" / f"{exported_id}_0000.nii.gz")
        np.testing.assert_array_equal(
            np.asarray(label.dataobj), np.asarray(source_label.dataobj).astype(np.uint8)
        )
        np.testing.assert_allclose(label.affine, source_label.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(source_image.dataobj))
        np.testing.assert_allclose(image.affine, source_image.affine, atol=1e-5)


def test_an_export_can_be_limited_to_chosen_cases(team, make_case, tmp_path):
    chosen = _approved_case(make_case, team, "chosen", seed=1)
    _approved_case(make_case, team, "left out", seed=2)
    job = exports.create_export_job(team.manager, team.project, "nifti", case_ids=[chosen.pk], enqueue=False)
    exports.run_export_job(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded" and job.case_count == 1
    assert [row["case_name"] for row in job.options["result"]] == ["chosen"]


def test_an_approved_case_exports_the_revision_the_reviewer_approved(team, make_case, tmp_path):
    """A propagation result that lands after the approval must not slip into the training data."""
    from annotator.models import RevisionSource
    from annotator.services import workflow

    case = make_case(team.project, name="late", label=_label((6, 20, 24), 1), assignee=team.annotator)
    Case.objects.filter(pk=case.pk).update(reviewer=team.reviewer)
    case.refresh_from_db()
    for actor, action in [
        (team.annotator, "start"),
        (team.annotator, "submit"),
        (team.reviewer, "start_review"),
        (team.reviewer, "approve"),
    ]:
        workflow.transition(actor, case, action)
    approved_labels = _revision_labels(case)
    case.refresh_from_db()
    revisions.create_revision(
        case, np.zeros((6, 20, 24), np.uint8), author=None, source=RevisionSource.PROPAGATION
    )

    job = exports.create_export_job(team.manager, team.project, "nifti", enqueue=False)
    exports.run_export_job(job.pk)

    job.refresh_from_db()
    (row,) = job.options["result"]
    assert row["revision"] == 1 and "approved revision" in row["note"]
    with zipfile.ZipFile(storage.local_path(job.file.name)) as archive:
        archive.extractall(tmp_path / "unzipped")
    (folder,) = (tmp_path / "unzipped").iterdir()
    exported = np.asarray(nib.load(folder / "late.nii.gz").dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(exported, approved_labels)
    assert exported.any()
