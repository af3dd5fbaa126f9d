"""A refinement re-propagates away from the slice the annotator prompted on, never back across it.

The jobs run synchronously here (``run_job`` as the gpu worker calls it) with the classical engine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from annotator.maskcodec import encode_rle
from annotator.models import JobStatus, PropagationJob, SegmentationRevision
from annotator.services import propagation, revisions

pytestmark = pytest.mark.django_db(transaction=True)

# The object of ``object_volume`` spans slices ~5..19 and is largest on slice 12; the prompt is well below.
PROMPT_Z = 7
EDITED_Z = 10
BOX_LOW = {"type": "box", "z": PROMPT_Z, "y0": 14, "x0": 12, "y1": 26, "x1": 26}


@pytest.fixture
def run_jobs(monkeypatch: pytest.MonkeyPatch, engine_name: str, live_layer: Any) -> list[int]:
    queued: list[int] = []
    monkeypatch.setattr(propagation.queue, "_enqueue", queued.append)
    return queued


def _run(queued: list[int]) -> PropagationJob:
    job_id = queued.pop()
    propagation.run_job(job_id, "test-worker")
    job = PropagationJob.objects.get(pk=job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    return job


def _labels(revision_id: int) -> np.ndarray:
    return revisions.read_label_volume(
        SegmentationRevision.objects.select_related("case__volume").get(pk=revision_id)
    )


def test_a_refinement_far_from_the_prompt_does_not_re_propagate_back_across_the_prompt_slice(
    run_jobs, object_case, team
):
    liver = team.project.label_classes.get(name="liver")
    propagation.start_propagation(
        team.annotator, object_case.pk, {"label": liver.pk, "prompt": BOX_LOW, "base_revision": None}
    )
    first = _run(run_jobs)
    before = _labels(first.result_revision_id)
    assert before[PROMPT_Z].any() and before[: PROMPT_Z - 1].any()

    # Between the prompt slice and the object's largest slice, the annotator erases the left half.
    edited = before[EDITED_Z] == liver.value
    edited[:, :19] = False
    propagation.start_refinement(
        team.annotator,
        object_case.pk,
        {
            "label": liver.pk,
            "base_revision": first.result_revision_id,
            "edited_slices": [{"z": EDITED_Z, "rle": encode_rle(edited)}],
        },
    )
    refinement = _run(run_jobs)
    after = _labels(refinement.result_revision_id)

    assert refinement.options["anchor_z"] == PROMPT_Z
    assert np.array_equal(after[EDITED_Z] == liver.value, edited)
    # Towards the prompt slice nothing changes: those slices were guided by the prompt itself.
    assert np.array_equal(after[:EDITED_Z], before[:EDITED_Z])
    # Away from it, the erased half is carried on.
    assert not np.array_equal(after[EDITED_Z + 1 :], before[EDITED_Z + 1 :])
    # A further correction on top of the refinement still knows where the prompt was.
    object_case.refresh_from_db()
    assert propagation.refinement_anchor(object_case, liver.value, {16})["anchor_z"] == PROMPT_Z


def test_a_refinement_keeps_the_boundary_slices_of_the_propagation_it_corrects(run_jobs, object_case, team):
    liver = team.project.label_classes.get(name="liver")
    propagation.start_propagation(
        team.annotator,
        object_case.pk,
        {"label": liver.pk, "prompt": BOX_LOW, "base_revision": None, "z_min": 4, "z_max": 14},
    )
    first = _run(run_jobs)
    before = _labels(first.result_revision_id)
    assert not before[15:].any()

    # Above the prompt, next to the top boundary: re-propagating upward must stop at slice 14.
    edited = before[13] == liver.value
    edited[:, :19] = False
    propagation.start_refinement(
        team.annotator,
        object_case.pk,
        {
            "label": liver.pk,
            "base_revision": first.result_revision_id,
            "edited_slices": [{"z": 13, "rle": encode_rle(edited)}],
        },
    )
    refinement = _run(run_jobs)

    assert (refinement.options["z_min"], refinement.options["z_max"]) == (4, 14)
    assert not _labels(refinement.result_revision_id)[15:].any()
