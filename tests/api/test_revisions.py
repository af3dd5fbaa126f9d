"""Segmentation revisions: immutable, counted in voxels and mL, downloadable as raw labels and NIfTI."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import phantom_volume


@pytest.fixture
def labelled_case(team, make_case):
    label = np.zeros((6, 20, 24), dtype=np.uint8)
    label[1:3, 4:8, 4:9] = 1  # 2 * 4 * 5 = 40 voxels
    label[4, 10:12, 10:13] = 2  # 6 voxels
    return make_case(
        team.project, name="labelled", assignee=team.annotator, array=phantom_volume(), label=label
    )


def test_a_revision_reports_voxels_and_millilitres_per_label(labelled_case, team, api_client):
    revisions = api_client(team.annotator).get(f"/api/cases/{labelled_case.pk}/revisions/").json()

    assert len(revisions) == 1
    revision = revisions[0]
    assert revision["number"] == 1 and revision["is_current"] is True
    assert revision["label_counts"] == {"1": 40, "2": 6}
    voxel_ml = 2.5 * 0.8 * 0.8 / 1000
    assert revision["label_volumes_ml"]["1"] == pytest.approx(40 * voxel_ml)
    assert revision["label_volumes_ml"]["2"] == pytest.approx(6 * voxel_ml)


def test_a_saved_revision_cannot_be_changed(labelled_case):
    from annotator.models import ImmutableRowError

    revision = labelled_case.current_revision
    revision.message = "rewritten history"

    with pytest.raises(ImmutableRowError):
        revision.save()


def test_new_revisions_chain_to_their_parent_and_become_current(labelled_case, team):
    from annotator.models import RevisionSource
    from annotator.services import revisions

    first = labelled_case.current_revision
    label = revisions.read_label_volume(first)
    label[label == 2] = 0

    second = revisions.create_revision(
        labelled_case, label, author=team.annotator, source=RevisionSource.MANUAL
    )

    labelled_case.refresh_from_db()
    assert (second.number, second.parent_id) == (2, first.pk)
    assert labelled_case.current_revision_id == second.pk
    assert second.label_counts == {"1": 40}
    assert np.array_equal(revisions.read_label_volume(first)[4, 10:12, 10:13], np.full((2, 3), 2))


def test_labels_download_decodes_to_the_revision(labelled_case, team, api_client):
    client = api_client(team.annotator)
    revision_id = labelled_case.current_revision_id

    response = client.get(f"/api/cases/{labelled_case.pk}/revisions/{revision_id}/labels/")

    assert response["Content-Encoding"] == "gzip"
    labels = np.frombuffer(gzip.decompress(b"".join(response.streaming_content)), dtype=np.uint8)
    assert np.bincount(labels, minlength=3).tolist()[1:] == [40, 6]
    again = client.get(
        f"/api/cases/{labelled_case.pk}/revisions/{revision_id}/labels/", HTTP_IF_NONE_MATCH=response["ETag"]
    )
    assert again.status_code == 304


def test_nifti_download_lands_on_the_source_grid(labelled_case, team, api_client):
    response = api_client(team.annotator).get(
        f"/api/cases/{labelled_case.pk}/revisions/{labelled_case.current_revision_id}/nifti/"
    )

    assert response.status_code == 200
    assert 'filename="labelled_rev1.nii.gz"' in response["Content-Disposition"]
    image = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    data = np.asarray(image.dataobj)
    # NIfTI (i, j, k) = canonical (x, y, z): the label's z-slab 1..2 is k 1..2.
    assert data.shape == (24, 20, 6)
    assert int((data == 1).sum()) == 40 and int((data[:, :, 1:3] == 1).sum()) == 40
    assert np.allclose(image.affine[:3, :3], np.diag([0.8, 0.8, 2.5]))


def test_an_unknown_revision_is_not_found(labelled_case, team, api_client):
    response = api_client(team.annotator).get(f"/api/cases/{labelled_case.pk}/revisions/999999/")

    assert response.status_code == 404


def test_writing_a_label_volume_of_the_wrong_shape_is_refused(labelled_case, team):
    from annotator.services import revisions
    from annotator.services.errors import InvalidInput

    with pytest.raises(InvalidInput):
        revisions.create_revision(
            labelled_case, np.zeros((2, 2, 2), dtype=np.uint8), author=team.annotator, source="manual"
        )
