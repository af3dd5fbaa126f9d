"""What the API says about a job's place in the queue."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.django_db
def test_a_job_claimed_while_its_answer_is_built_shows_as_next_in_the_queue(
    team: Any, make_case: Any
) -> None:
    """A fast worker can start a job between the request reading it and the answer being written; the
    answer then still says "queued" and must give the position that goes with it (the front), not none."""
    from annotator.models import JobStatus, PropagationJob
    from annotator.services.propagation import job_payload

    case = make_case(team.project, assignee=team.annotator)
    first = PropagationJob.objects.create(case=case, user=team.annotator, label_value=1)
    second = PropagationJob.objects.create(case=case, user=team.annotator, label_value=2)
    PropagationJob.objects.filter(pk=first.pk).update(status=JobStatus.RUNNING)

    assert first.status == JobStatus.QUEUED  # the request's copy, read before the worker claimed it
    assert job_payload(first)["queue_position"] == 0
    assert job_payload(second)["queue_position"] == 0
    assert job_payload(PropagationJob.objects.get(pk=first.pk))["queue_position"] is None
