"""API-facing job creation: propagations and refinements (with their anchor), get, cancel, supersede."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from annotator import events
from annotator.maskcodec import encode_rle
from annotator.models import ACTIVE_JOB_STATUSES, Case, JobStatus, PropagationJob, PropagationKind
from annotator.services import access, audit, workflow
from annotator.services.access import AnyUser
from annotator.services.errors import Conflict, Forbidden, InvalidInput, NotFound
from annotator.services.propagation.checks import (
    EditTarget,
    check_base_revision,
    check_bounds,
    check_can_edit,
    check_clicks,
    check_edited_slices,
    check_prompt,
    locked_case,
)
from annotator.services.propagation.queue import dispatch_pending, job_payload


def supersede_active_jobs(case: Case, label_value: int | None, by: PropagationJob | None) -> list[int]:
    """Stop the case's active jobs (for one label, or all): queued ones at once, running ones between slices."""
    active = PropagationJob.objects.filter(case=case, status__in=ACTIVE_JOB_STATUSES)
    if label_value is not None:
        active = active.filter(label_value=label_value)
    if by is not None:
        active = active.exclude(pk=by.pk)
    stopped = []
    now = timezone.now()
    new_status = JobStatus.SUPERSEDED if by is not None else JobStatus.CANCELLED
    for job in active.select_for_update():
        if job.status == JobStatus.QUEUED:
            PropagationJob.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
                status=new_status, superseded_by=by, finished_at=now
            )
            job.refresh_from_db()
            events.job_cancelled(case.pk, job_payload(job))
        else:
            PropagationJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
                cancel_requested=True, superseded_by=by
            )
        stopped.append(job.pk)
    if stopped:
        transaction.on_commit(dispatch_pending)
    return stopped


def _create_job(
    target: EditTarget,
    user: AnyUser,
    kind: str,
    prompt: dict[str, Any],
    options: dict[str, Any],
    base_revision: Any,
) -> PropagationJob:
    with transaction.atomic():
        case = locked_case(target.case)
        check_base_revision(case, base_revision)
        job = PropagationJob.objects.create(
            case=case,
            user=user if user.is_authenticated else None,
            label_value=target.label.value,
            kind=kind,
            prompt=prompt,
            options={**options, "label_class": target.label.pk},
            base_revision_id=case.current_revision_id,
        )
        superseded = supersede_active_jobs(case, target.label.value, by=job)
        workflow.note_edit_started(user, case)
        audit.record(
            user,
            f"job.{kind}",
            case=case,
            obj=job,
            data={"label": target.label.value, "superseded": superseded},
        )
        events.job_queued(case.pk, job_payload(job))
        transaction.on_commit(dispatch_pending)
    return job


def start_propagation(user: AnyUser, case_id: int, data: dict[str, Any]) -> PropagationJob:
    """``{label, prompt, base_revision, z_min?, z_max?}`` -> a queued propagation job."""
    target = check_can_edit(user, case_id, data.get("label"))
    prompt = check_prompt(data.get("prompt"), target.shape)
    bounds = check_bounds(data.get("z_min"), data.get("z_max"), prompt["z"], target.shape[0])
    return _create_job(target, user, PropagationKind.PROPAGATE, prompt, bounds, data.get("base_revision"))


def start_refinement(user: AnyUser, case_id: int, data: dict[str, Any]) -> PropagationJob:
    """``{label, base_revision, clicks: [{z,y,x,positive}], edited_slices: [{z, rle}]}`` -> a queued job."""
    target = check_can_edit(user, case_id, data.get("label"))
    clicks = check_clicks(data.get("clicks"), target.shape)
    edited = check_edited_slices(data.get("edited_slices"), target.shape)
    if not clicks and not edited:
        raise InvalidInput("A refinement needs clicks or edited slices.", code="no_corrections")
    prompt = {
        "type": "refine",
        "clicks": clicks,
        "edited_slices": [{"z": z, "rle": encode_rle(mask)} for z, mask in sorted(edited.items())],
    }
    corrected_z = {click["z"] for click in clicks} | set(edited)
    options = refinement_anchor(target.case, target.label.value, corrected_z)
    return _create_job(target, user, PropagationKind.REFINE, prompt, options, data.get("base_revision"))


def _prompt_job(case: Case, label_value: int) -> PropagationJob | None:
    """The propagation job whose prompt the current label ``label_value`` of ``case`` grew from.

    The current revision's own job when it is a propagation of that label; else the latest succeeded
    propagation of that label whose revision is not newer than the current one (refinements and manual
    edits keep the prompt of the propagation before them).
    """
    revision = case.current_revision
    if revision is None:
        return None
    job = revision.job
    if job is not None and job.kind == PropagationKind.PROPAGATE and job.label_value == label_value:
        return job
    return (
        PropagationJob.objects.filter(
            case=case,
            label_value=label_value,
            kind=PropagationKind.PROPAGATE,
            status=JobStatus.SUCCEEDED,
            result_revision__number__lte=revision.number,
        )
        .order_by("-result_revision__number", "-pk")
        .first()
    )


def refinement_anchor(case: Case, label_value: int, corrected_z: set[int]) -> dict[str, int]:
    """Engine options of a refinement: the prompt slice of the propagation that made the label
    (``anchor_z``: the refinement re-propagates away from it, never back across it) and that
    propagation's boundary slices, widened to take in the corrected slices. Empty when there is none."""
    job = _prompt_job(case, label_value)
    if job is None or not isinstance(job.prompt.get("z"), int):
        return {}
    options: dict[str, int] = {"anchor_z": job.prompt["z"], "anchor_job": job.pk}
    if job.options.get("z_min") is not None:
        options["z_min"] = min(int(job.options["z_min"]), *corrected_z)
    if job.options.get("z_max") is not None:
        options["z_max"] = max(int(job.options["z_max"]), *corrected_z)
    return options


def get_job(user: AnyUser, job_id: int) -> PropagationJob:
    job = PropagationJob.objects.select_related("case").filter(pk=job_id).first()
    if job is None or not access.cases_visible_to(user).filter(pk=job.case_id).exists():
        raise NotFound("Job not found.", code="not_found")
    return job


def cancel_job(user: AnyUser, job_id: int) -> PropagationJob:
    job = get_job(user, job_id)
    if not (job.user_id == user.pk or access.can_annotate(user, job.case)):
        raise Forbidden("You may not cancel this job.", code="cannot_cancel")
    with transaction.atomic():
        now = timezone.now()
        if PropagationJob.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
            status=JobStatus.CANCELLED, finished_at=now
        ):
            job.refresh_from_db()
            events.job_cancelled(job.case_id, job_payload(job))
            transaction.on_commit(dispatch_pending)
        elif not PropagationJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
            cancel_requested=True
        ):
            job.refresh_from_db()
            raise Conflict(
                f"The job has already ended ({job.status}).",
                code="job_finished",
                extra={"job": job_payload(job)},
            )
        audit.record(user, "job.cancel", case=job.case, obj=job)
    job.refresh_from_db()
    return job
