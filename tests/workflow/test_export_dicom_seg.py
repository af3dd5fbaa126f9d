"""DICOM SEG export of DICOM-imported cases, read back with highdicom: voxels, frame of reference, references.

Cases are imported through the real import path (loose DICOM files or a zip, with an NRRD / NIfTI label),
approved, exported by the io task, downloaded as a ZIP and read back. Skipped without ../shared/data/dicom.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from annotator.models import Case, CaseStatus
from annotator.services import revisions, storage
from tests.api.helpers import finished_job, path_upload, post_import

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.usefixtures("celery_eager"),
    # The source series' own PatientName ("JANCT000") is a single-component name; highdicom warns on copy.
    pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name"),
]


def _zip_of(paths: list[Path]) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in paths:
            archive.write(path, f"series/{path.name}")
    buffer.seek(0)
    buffer.name = "series.zip"
    return buffer


def _import(client, team, capture, files, label, **fields) -> Case:
    job = finished_job(client, post_import(client, team.project, files, capture, label=label, **fields))
    assert job["status"] == "succeeded", job
    (case,) = job["cases"]
    return Case.objects.select_related("volume").get(pk=case["id"])


def _assert_seg_matches(seg_path: Path, case: Case, names: dict[int, str]) -> None:
    meta = case.volume.source_meta
    label = revisions.current_label_volume(case)
    seg = hd.seg.segread(seg_path)
    first_source = pydicom.dcmread(storage.local_path(meta["source_files"][0]), stop_before_pixels=True)

    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage
    assert seg.FrameOfReferenceUID == meta["frame_of_reference_uid"] == first_source.FrameOfReferenceUID
    assert seg.StudyInstanceUID == first_source.StudyInstanceUID
    (referenced_series,) = seg.ReferencedSeriesSequence
    assert referenced_series.SeriesInstanceUID == first_source.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in referenced_series.ReferencedInstanceSequence}
    assert referenced == set(meta["sop_instance_uids"])

    present = [value for value in sorted(names) if np.any(label == value)]
    assert [segment.SegmentLabel for segment in seg.SegmentSequence] == [names[value] for value in present]
    voxels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=meta["sop_instance_uids"],
        combine_segments=False,
        assert_missing_frames_are_empty=True,
    )
    assert voxels.shape == (*label.shape, len(present))
    for index, value in enumerate(present):
        np.testing.assert_array_equal(voxels[..., index].astype(bool), label == value, err_msg=names[value])


def test_dicom_seg_export_of_imported_series_reads_back_voxel_exact_with_the_right_references(
    shared_data, team, make_case, api_client, django_capture_on_commit_callbacks, tmp_path
):
    team.project.label_classes.filter(value=2).update(name="spine")
    names = {1: "liver", 2: "spine"}
    client = api_client(team.manager)
    dcmqi = shared_data / "dicom" / "dcmqi_ct3slice"
    # Loose files, uploaded in reverse order: z comes from the positions, not the names.
    three_slices = _import(
        client,
        team,
        django_capture_on_commit_callbacks,
        [path_upload(path) for path in sorted((dcmqi / "ct").glob("*.dcm"), reverse=True)],
        path_upload(dcmqi / "nrrd" / "liver_spine_seg.nrrd"),
    )
    series = shared_data / "dicom" / "ct_series_20slice"
    # The NIfTI label of this series is y-flipped relative to the DICOM; only physical alignment is right.
    twenty_slices = _import(
        client,
        team,
        django_capture_on_commit_callbacks,
        [_zip_of(sorted((series / "dicom").iterdir()))],
        path_upload(series / "example_seg_dicom.nii.gz"),
        label_value_map='{"5": 1}',
        drop_unmapped_labels=True,
    )
    nifti_case = make_case(team.project, name="nifti case", label=np.ones((6, 20, 24), dtype=np.uint8))
    Case.objects.filter(project=team.project).update(status=CaseStatus.APPROVED)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            f"/api/projects/{team.project.pk}/exports/", {"format": "dicom_seg"}, format="json"
        )
    job = client.get(f"/api/exports/{response.json()['id']}/").json()

    assert job["status"] == "succeeded", job["error"]
    assert job["case_count"] == 1
    data = b"".join(client.get(job["download_url"]).streaming_content)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(tmp_path / "unzipped")
    (folder,) = (tmp_path / "unzipped").iterdir()
    with (folder / "manifest.csv").open() as handle:
        rows = {int(row["case_id"]): row for row in csv.DictReader(handle)}
    # The NIfTI-imported case has no series to reference and is not even considered.
    assert nifti_case.pk not in rows
    _assert_seg_matches(folder / rows[three_slices.pk]["file"], three_slices, names)
    # Independent of our reader: dcmqi's README gives the voxel counts of this label map.
    three_label = revisions.current_label_volume(three_slices)
    assert int((three_label == 1).sum()) == 107098 and int((three_label == 2).sum()) == 12439
    # This series has no StudyInstanceUID: a SEG could not reference it, so it is left out with the reason,
    # in the manifest and in the job, without sinking the export of the other case.
    assert rows[twenty_slices.pk]["file"] == ""
    assert "StudyInstanceUID" in rows[twenty_slices.pk]["note"]
    (skipped,) = job["skipped"]
    assert skipped["case_id"] == twenty_slices.pk and "StudyInstanceUID" in skipped["reason"]
