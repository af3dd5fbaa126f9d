"""Live propagation: jobs from prompts and corrections, fair dispatch, the worker's run loop, undo/redo.

The ``PropagationJob`` row is the single source of truth; a Celery message only carries its id.

Life of a job::

    queued (claimed_at NULL)  --dispatch-->  queued (claimed_at set: a message is on the `gpu` queue)
        --worker claims (conditional UPDATE queued -> running)-->  running  --> succeeded | failed
                                                                         \\-> cancelled | superseded

* Fairness: a user has at most ``PROPLABEL_JOBS_PER_USER`` jobs dispatched or running; the rest wait in the
  database and are dispatched oldest-first, one user at a time, as slots free up. The broker queue therefore
  never holds more than that per user, and users' jobs interleave. ``queue_position`` reports how many jobs
  will start before a queued one.
* Exactly once: only the conditional claim starts a job, so duplicate messages (a re-delivery after a lost
  worker, a re-dispatch by the sweep) are harmless no-ops.
* Lost workers: a running job's worker refreshes ``heartbeat_at`` from a side thread. ``sweep_stale_jobs``
  (run by every worker, see ``annotator/live_tasks.py``, and by the job status view) puts a job whose
  heartbeat stopped back in the queue once (``job.retrying``) and fails it the second time, with the reason.
  Saved revisions are never touched: a job only writes when it finishes.
* Cancel / supersede are requested on the row; the worker reads the row between slices and stops.
* Conflicts: writes carry ``base_revision``; a stale one gets 409. A job finishing after the case moved on
  is merged onto the new current revision when no revision in between changed its label, else it fails
  with a conflict (the other editor's work is kept).

Label merging (``merge_label``): only the job's label value changes; voxels of other labels are never
overwritten (locked or not), and a job for a locked label is refused.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from annotator import events
from annotator.maskcodec import decode_rle, encode_rle
from annotator.models import (
    ACTIVE_JOB_STATUSES,
    Case,
    CaseStatus,
    JobStatus,
    LabelClass,
    PropagationJob,
    PropagationKind,
    RevisionSource,
    SegmentationRevision,
)
from annotator.services import access, audit, cases, heartbeats, live_state, revisions, storage, workflow
from annotator.services.access import AnyUser
from annotator.services.errors import Conflict, Forbidden, InvalidInput, NotFound

logger = logging.getLogger(__name__)


def jobs_per_user() -> int:
    return max(1, int(_setting("PROPLABEL_JOBS_PER_USER", 1)))


def redispatch_seconds() -> float:
    """A dispatched job that no worker claimed for this long gets a fresh message (the first may be lost)."""
    return _setting("PROPLABEL_JOB_REDISPATCH_SECONDS", 120.0)


MAX_ATTEMPTS = heartbeats.MAX_ATTEMPTS
# Re-exported: workers and tests tune the shared heartbeat through these names.
heartbeat_seconds = heartbeats.heartbeat_seconds
stale_seconds = heartbeats.stale_seconds
_setting = heartbeats._setting

EDITABLE_STATUSES = (CaseStatus.NEW, CaseStatus.IN_PROGRESS, CaseStatus.CHANGES_REQUESTED)
"""Statuses in which the case belongs to its annotator (outside them, a refusal is a 409, not a 403)."""
MAX_CLICKS = 256


# --- input checks (check_*) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditTarget:
    """A case the user may change, its label class and the image shape, all checked."""

    case: Case
    label: LabelClass
    shape: tuple[int, int, int]


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an integer.", code="invalid_prompt")
    return value


def _check_index(value: Any, size: int, what: str) -> int:
    index = _int(value, what)
    if not 0 <= index < size:
        raise InvalidInput(f"{what}={index} lies outside the volume (0..{size - 1}).", code="outside_volume")
    return index


def _check_mask_rle(rle: Any, shape: tuple[int, int, int], what: str, allow_empty: bool) -> np.ndarray:
    if not isinstance(rle, list):
        raise InvalidInput(f"{what} rle must be a list of run lengths.", code="invalid_rle")
    try:
        mask = decode_rle(rle, (shape[1], shape[2]))
    except ValueError as exc:
        raise InvalidInput(f"{what}: {exc}.", code="invalid_rle") from None
    if not allow_empty and not mask.any():
        raise InvalidInput(f"{what} is empty.", code="empty_mask")
    return mask


def check_prompt(prompt: Any, shape: tuple[int, int, int]) -> dict[str, Any]:
    """A clean copy of a prompt of the contract (box / mask / point); 400 when malformed or outside."""
    if not isinstance(prompt, dict):
        raise InvalidInput("prompt must be an object with a type.", code="invalid_prompt")
    kind = prompt.get("type")
    z = _check_index(prompt.get("z"), shape[0], "prompt z")
    if kind == "box":
        y0, x0, y1, x1 = (_int(prompt.get(key), f"box {key}") for key in ("y0", "x0", "y1", "x1"))
        if y1 < y0 or x1 < x0:
            raise InvalidInput("The box is empty: need y0 <= y1 and x0 <= x1.", code="empty_box")
        if y0 < 0 or x0 < 0 or y1 >= shape[1] or x1 >= shape[2]:
            raise InvalidInput(
                f"The box reaches outside the slice (rows 0..{shape[1] - 1}, columns 0..{shape[2] - 1}).",
                code="outside_volume",
            )
        return {"type": "box", "z": z, "y0": y0, "x0": x0, "y1": y1, "x1": x1}
    if kind == "mask":
        _check_mask_rle(prompt.get("rle"), shape, "mask prompt", allow_empty=False)
        return {"type": "mask", "z": z, "rle": [int(run) for run in prompt["rle"]]}
    if kind == "point":
        y = _check_index(prompt.get("y"), shape[1], "point y")
        x = _check_index(prompt.get("x"), shape[2], "point x")
        return {"type": "point", "z": z, "y": y, "x": x}
    raise InvalidInput("prompt type must be box, mask or point.", code="invalid_prompt")


def _check_bounds(z_min: Any, z_max: Any, prompt_z: int, depth: int) -> dict[str, int]:
    bounds: dict[str, int] = {}
    if z_min is not None:
        bounds["z_min"] = _check_index(z_min, depth, "z_min")
        if bounds["z_min"] > prompt_z:
            raise InvalidInput("z_min must not lie above the prompt slice.", code="invalid_bounds")
    if z_max is not None:
        bounds["z_max"] = _check_index(z_max, depth, "z_max")
        if bounds["z_max"] < prompt_z:
            raise InvalidInput("z_max must not lie below the prompt slice.", code="invalid_bounds")
    return bounds


def check_clicks(clicks: Any, shape: tuple[int, int, int]) -> list[dict[str, Any]]:
    if clicks is None:
        return []
    if not isinstance(clicks, list) or len(clicks) > MAX_CLICKS:
        raise InvalidInput(f"clicks must be a list of at most {MAX_CLICKS} clicks.", code="invalid_clicks")
    clean = []
    for click in clicks:
        if not isinstance(click, dict):
            raise InvalidInput("Each click is {z, y, x, positive}.", code="invalid_clicks")
        positive = click.get("positive", True)
        if not isinstance(positive, bool):
            raise InvalidInput("click positive must be true or false.", code="invalid_clicks")
        clean.append(
            {
                "z": _check_index(click.get("z"), shape[0], "click z"),
                "y": _check_index(click.get("y"), shape[1], "click y"),
                "x": _check_index(click.get("x"), shape[2], "click x"),
                "positive": positive,
            }
        )
    return clean


def check_edited_slices(edited: Any, shape: tuple[int, int, int]) -> dict[int, np.ndarray]:
    if edited is None:
        return {}
    if not isinstance(edited, list) or len(edited) > shape[0]:
        raise InvalidInput("edited_slices must be a list of {z, rle}.", code="invalid_edit")
    masks: dict[int, np.ndarray] = {}
    for item in edited:
        if not isinstance(item, dict):
            raise InvalidInput("Each edited slice is {z, rle}.", code="invalid_edit")
        z = _check_index(item.get("z"), shape[0], "edited slice z")
        if z in masks:
            raise InvalidInput(f"Slice {z} is edited twice.", code="invalid_edit")
        masks[z] = _check_mask_rle(item.get("rle"), shape, f"edited slice {z}", allow_empty=True)
    return masks


def check_can_edit(user: AnyUser, case_id: int, label_id: Any | None) -> EditTarget:
    """The case (404 if invisible), edit right (403), editable status (409), label (400), unlocked (409)."""
    case = access.get_visible_case(user, case_id)
    if not workflow.may_edit_labels(user, case):
        if case.status in EDITABLE_STATUSES:
            # The case is open for editing, just not by this user (e.g. its reviewer before the review).
            raise Forbidden("You may view this case but not change its segmentation.", code="cannot_edit")
        raise Conflict(
            f"The case is {case.get_status_display().lower()}; you cannot change its segmentation now.",
            code="case_not_editable",
            extra={"status": case.status},
        )
    volume = getattr(case, "volume", None)
    if volume is None:
        raise Conflict("The case has no image yet.", code="no_volume")
    label = None
    if label_id is not None:
        label = LabelClass.objects.filter(project_id=case.project_id, pk=_int(label_id, "label")).first()
        if label is None:
            raise InvalidInput("Unknown label class for this project.", code="unknown_label")
        if label.value in (case.locked_labels or []):
            raise Conflict(f"The label {label.name} is locked on this case.", code="label_locked")
    return EditTarget(case=case, label=label, shape=volume.shape_zyx)  # type: ignore[arg-type]


def _check_base_revision(case: Case, base_revision: Any) -> None:
    """409 unless ``base_revision`` is the case's current revision (None = the case has none yet)."""
    if base_revision is not None:
        base_revision = _int(base_revision, "base_revision")
    if base_revision != case.current_revision_id:
        raise Conflict(
            "The case changed since you loaded it; reload the current revision and try again.",
            code="revision_conflict",
            extra={"current_revision": case.current_revision_id},
        )


def _locked_case(case: Case) -> Case:
    """Re-read the case under a row lock, so the base-revision check and the write are atomic."""
    # of=("self",): PostgreSQL refuses FOR UPDATE on the nullable side of the outer join to the volume.
    return Case.objects.select_for_update(of=("self",)).select_related("project", "volume").get(pk=case.pk)


# --- job creation, cancel, supersede ---------------------------------------------------------------------


def _supersede_active_jobs(case: Case, label_value: int | None, by: PropagationJob | None) -> list[int]:
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
        case = _locked_case(target.case)
        _check_base_revision(case, base_revision)
        job = PropagationJob.objects.create(
            case=case,
            user=user if user.is_authenticated else None,
            label_value=target.label.value,
            kind=kind,
            prompt=prompt,
            options={**options, "label_class": target.label.pk},
            base_revision_id=case.current_revision_id,
        )
        superseded = _supersede_active_jobs(case, target.label.value, by=job)
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
    if target.label is None:
        raise InvalidInput("label is required.", code="unknown_label")
    prompt = check_prompt(data.get("prompt"), target.shape)
    bounds = _check_bounds(data.get("z_min"), data.get("z_max"), prompt["z"], target.shape[0])
    return _create_job(target, user, PropagationKind.PROPAGATE, prompt, bounds, data.get("base_revision"))


def start_refinement(user: AnyUser, case_id: int, data: dict[str, Any]) -> PropagationJob:
    """``{label, base_revision, clicks: [{z,y,x,positive}], edited_slices: [{z, rle}]}`` -> a queued job."""
    target = check_can_edit(user, case_id, data.get("label"))
    if target.label is None:
        raise InvalidInput("label is required.", code="unknown_label")
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


# --- fair dispatch and queue positions ---------------------------------------------------------------------


def _enqueue(job_id: int) -> None:
    from annotator.live_tasks import run_propagation  # the task module imports this one

    try:
        run_propagation.apply_async(args=[job_id], queue="gpu")
    except Exception:
        # The row stays dispatched; the sweep sends a fresh message after PROPLABEL_JOB_REDISPATCH_SECONDS.
        logger.exception("could not enqueue propagation job %s", job_id)


def dispatch_pending() -> list[int]:
    """Hand waiting jobs to the broker, oldest user first, while each user has a free slot."""
    limit = jobs_per_user()
    waiting_users = list(
        PropagationJob.objects.filter(status=JobStatus.QUEUED, claimed_at__isnull=True)
        .order_by("created_at", "id")
        .values_list("user_id", flat=True)
    )
    dispatched: list[int] = []
    for user_id in dict.fromkeys(waiting_users):
        with transaction.atomic():
            if user_id is not None:
                # Serialises dispatchers per user (PostgreSQL); SQLite's IMMEDIATE transactions already do.
                get_user_model().objects.select_for_update().filter(pk=user_id).first()
            mine = PropagationJob.objects.filter(user_id=user_id)
            in_flight = mine.filter(
                Q(status=JobStatus.RUNNING) | Q(status=JobStatus.QUEUED, claimed_at__isnull=False)
            ).count()
            free = limit - in_flight
            if free <= 0:
                continue
            candidates = mine.filter(status=JobStatus.QUEUED, claimed_at__isnull=True).order_by(
                "created_at", "id"
            )
            for job_id in candidates.values_list("pk", flat=True)[:free]:
                if PropagationJob.objects.filter(
                    pk=job_id, status=JobStatus.QUEUED, claimed_at__isnull=True
                ).update(claimed_at=timezone.now()):
                    dispatched.append(job_id)
                    transaction.on_commit(lambda job_id=job_id: _enqueue(job_id))
    return dispatched


def queue_positions() -> dict[int, int]:
    """Job id -> how many queued jobs start before it (0 = next).

    Dispatched jobs go first, in dispatch order; waiting ones follow in the dispatcher's round-robin order:
    every user's first waiting job (users ordered by their oldest), then every user's second, ...
    """
    queued = list(
        PropagationJob.objects.filter(status=JobStatus.QUEUED)
        .order_by("created_at", "id")
        .values_list("pk", "user_id", "claimed_at")
    )
    dispatched = sorted((row for row in queued if row[2] is not None), key=lambda row: (row[2], row[0]))
    rank_of_user: dict[Any, int] = {}
    first_seen: dict[Any, int] = {}
    waiting_keys = []
    for index, (job_id, user_id, claimed_at) in enumerate(queued):
        if claimed_at is not None:
            continue
        first_seen.setdefault(user_id, index)
        rank = rank_of_user.get(user_id, 0)
        rank_of_user[user_id] = rank + 1
        waiting_keys.append(((rank, first_seen[user_id], index), job_id))
    order = [row[0] for row in dispatched] + [job_id for _, job_id in sorted(waiting_keys)]
    return {job_id: position for position, job_id in enumerate(order)}


def job_payload(job: PropagationJob, positions: dict[int, int] | None = None) -> dict[str, Any]:
    """The job as the API and the events show it (JSON-ready)."""
    position = None
    if job.status == JobStatus.QUEUED:
        position = (positions if positions is not None else queue_positions()).get(job.pk)

    def stamp(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": job.pk,
        "case": job.case_id,
        "kind": job.kind,
        "label": job.options.get("label_class"),
        "label_value": job.label_value,
        "status": job.status,
        "queue_position": position,
        "prompt": job.prompt if job.kind == PropagationKind.PROPAGATE else {"type": "refine"},
        "z_min": job.options.get("z_min"),
        "z_max": job.options.get("z_max"),
        "engine": job.options.get("engine"),
        "engine_note": job.options.get("engine_note"),
        "base_revision": job.base_revision_id,
        "result_revision": job.result_revision_id,
        "progress": job.progress,
        "slices_done": job.slices_done,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "superseded_by": job.superseded_by_id,
        "error": job.error,
        "user": job.user_id,
        "created_at": stamp(job.created_at),
        "started_at": stamp(job.started_at),
        "first_slice_at": stamp(job.first_slice_at),
        "finished_at": stamp(job.finished_at),
    }


# --- manual edits, undo, redo ------------------------------------------------------------------------------


def merge_label(
    base: np.ndarray, mask: np.ndarray, value: int, *, replace: bool, region: np.ndarray | None = None
) -> np.ndarray:
    """``base`` with label ``value`` set from ``mask``; every other label's voxels stay as they are.

    Args:
        base: uint8 ``(Z, Y, X)`` current labels.
        mask: bool, same shape: where the object is.
        value: the label value written.
        replace: also clear ``value`` where ``mask`` is off (within ``region`` if given), i.e. the mask
            becomes the label's new extent there; otherwise the mask is added to the label.
        region: bool, same shape: where ``replace`` applies (default everywhere).
    """
    merged = base.copy()
    if replace:
        clear = (base == value) & ~mask
        if region is not None:
            clear &= region
        merged[clear] = 0
    # Only background and the label itself may become this label: other labels are never overwritten.
    merged[mask & ((base == 0) | (base == value))] = value
    return merged


def save_manual_edit(user: AnyUser, case_id: int, data: dict[str, Any]) -> SegmentationRevision:
    """``{label, base_revision, edited_slices: [{z, rle}]}`` -> a new revision (the slices replace the label)."""
    target = check_can_edit(user, case_id, data.get("label"))
    if target.label is None:
        raise InvalidInput("label is required.", code="unknown_label")
    edited = check_edited_slices(data.get("edited_slices"), target.shape)
    if not edited:
        raise InvalidInput("edited_slices must not be empty.", code="invalid_edit")
    written: list[str] = []
    try:
        with transaction.atomic():
            revision = _save_manual_edit(user, target, edited, data.get("base_revision"), written)
    except BaseException:
        # create_revision wrote the label file before the row: a rolled-back transaction must take it along.
        storage.delete_files(written)
        raise
    return revision


def _save_manual_edit(
    user: AnyUser, target: EditTarget, edited: dict[int, np.ndarray], base_revision: Any, written: list[str]
) -> SegmentationRevision:
    case = _locked_case(target.case)
    _check_base_revision(case, base_revision)
    base = revisions.current_label_volume(case)
    mask = np.zeros(target.shape, dtype=bool)
    region = np.zeros(target.shape, dtype=bool)
    for z, slice_mask in edited.items():
        mask[z] = slice_mask
        region[z] = True
    merged = merge_label(base, mask, target.label.value, replace=True, region=region)
    # The user's own edit wins over a propagation of the same label still running on the old base.
    _supersede_active_jobs(case, target.label.value, by=None)
    workflow.note_edit_started(user, case)
    revision = revisions.create_revision(
        case,
        merged,
        author=user,
        source=RevisionSource.MANUAL,
        changed_label=target.label.value,
        message=f"manual edit of {len(edited)} slice(s)",
    )
    written.append(revision.file.name)
    events.revision_changed(case.pk, revision.pk)
    return revision


def move_revision(user: AnyUser, case_id: int, data: dict[str, Any], direction: str) -> Case:
    """Undo (``back``: to the parent) or redo (``forward``: to the newest child) the case's current revision."""
    target = check_can_edit(user, case_id, None)
    with transaction.atomic():
        case = _locked_case(target.case)
        if "base_revision" in data:
            _check_base_revision(case, data.get("base_revision"))
        current = case.current_revision
        if direction == "back":
            destination = current.parent if current is not None else None
            if destination is None:
                raise Conflict(
                    "There is nothing to undo.",
                    code="nothing_to_undo",
                    extra={"current_revision": case.current_revision_id},
                )
        else:
            destination = (
                SegmentationRevision.objects.filter(case=case, parent=current).order_by("-number").first()
                if current is not None
                else None
            )
            if destination is None:
                raise Conflict(
                    "There is nothing to redo.",
                    code="nothing_to_redo",
                    extra={"current_revision": case.current_revision_id},
                )
        # Jobs still running were computed on the revision being left: their result no longer applies.
        _supersede_active_jobs(case, None, by=None)
        Case.objects.filter(pk=case.pk).update(current_revision=destination, updated_at=timezone.now())
        case.current_revision = destination
        verb = "revision.undo" if direction == "back" else "revision.redo"
        audit.record(
            user,
            verb,
            case=case,
            obj=destination,
            data={"from": current.pk if current else None, "to": destination.pk},
        )
        events.revision_changed(case.pk, destination.pk)
    return case


# --- the state a (re)connecting browser needs ----------------------------------------------------------------


def case_state(case: Case) -> dict[str, Any]:
    """``{current_revision, status, job, slices, jobs}``: the running (or newest active) job and its slices."""
    case.refresh_from_db(fields=["current_revision", "status"])
    active = list(
        PropagationJob.objects.filter(case=case, status__in=ACTIVE_JOB_STATUSES).order_by("created_at")
    )
    positions = queue_positions() if active else {}
    running = next((job for job in active if job.status == JobStatus.RUNNING), None)
    shown = running or (active[-1] if active else None)
    return {
        "current_revision": case.current_revision_id,
        "status": case.status,
        "job": job_payload(shown, positions) if shown else None,
        "slices": live_state.read_slices(shown.pk) if running else [],
        "jobs": [job_payload(job, positions) for job in active],
    }


# --- the worker side -------------------------------------------------------------------------------------------


@dataclass
class LoadedEngine:
    engine: Any
    name: str
    note: str


_engine_lock = threading.Lock()
_engine: LoadedEngine | None = None


def get_engine() -> LoadedEngine:
    """The engine of this worker process, loaded once and kept warm.

    ``PROPLABEL_ENGINE`` picks it (default ``learned``, from ``PROPLABEL_WEIGHTS_DIR`` if set, else the shipped
    ``ml/weights``). Only when the learned weights are missing does it
    fall back to ``classical``, loudly, and the job records that it ran the fallback.
    """
    global _engine
    with _engine_lock:
        if _engine is None:
            from ml.engine import load_engine

            wanted = str(
                getattr(settings, "PROPLABEL_ENGINE", None) or os.environ.get("PROPLABEL_ENGINE", "learned")
            )
            # PROPLABEL_WEIGHTS_DIR points a deployment at mounted weights (default: the shipped ml/weights).
            weights_dir = getattr(settings, "PROPLABEL_WEIGHTS_DIR", None) or os.environ.get(
                "PROPLABEL_WEIGHTS_DIR"
            )
            try:
                if wanted == "learned" and weights_dir:
                    _engine = LoadedEngine(load_engine(wanted, weights_dir=weights_dir), wanted, "")
                else:
                    _engine = LoadedEngine(load_engine(wanted), wanted, "")
            except FileNotFoundError as exc:
                if wanted != "learned":
                    raise
                logger.error(
                    "LEARNED ENGINE WEIGHTS MISSING (%s): falling back to the classical engine; "
                    "propagation quality will be lower. Every job records this.",
                    exc,
                )
                _engine = LoadedEngine(
                    load_engine("classical"), "classical", f"learned weights missing: {exc}"
                )
            logger.info("propagation engine %s loaded in process %s", _engine.name, os.getpid())
        return _engine


class JobStopped(Exception):
    """The job was cancelled, superseded or taken away from this worker; it must not write anything."""


class _Heartbeat(heartbeats.Heartbeat):
    """Refreshes ``heartbeat_at`` and progress while the job runs, independent of how long a slice takes."""

    def __init__(self, job_id: int, worker: str) -> None:
        super().__init__(name=f"job-{job_id}-heartbeat")
        self.job_id = job_id
        self.worker = worker
        self.slices_done = 0
        self.progress = 0.0

    def beat(self) -> None:
        PropagationJob.objects.filter(pk=self.job_id, status=JobStatus.RUNNING, worker=self.worker).update(
            heartbeat_at=timezone.now(),
            slices_done=self.slices_done,
            progress=min(self.progress, 0.99),
        )


def _claim(job_id: int, worker: str) -> bool:
    now = timezone.now()
    return bool(
        PropagationJob.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
            status=JobStatus.RUNNING,
            worker=worker,
            attempts=F("attempts") + 1,
            started_at=now,
            heartbeat_at=now,
            first_slice_at=None,
            slices_done=0,
            progress=0.0,
            cancel_requested=False,
        )
    )


def _check_still_mine(job_id: int, worker: str) -> None:
    row = PropagationJob.objects.filter(pk=job_id).values("status", "cancel_requested", "worker").first()
    if (
        row is None
        or row["status"] != JobStatus.RUNNING
        or row["worker"] != worker
        or row["cancel_requested"]
    ):
        raise JobStopped()


def _engine_prompt(prompt: dict[str, Any], shape: tuple[int, int, int]) -> Any:
    from ml.engine import BoxPrompt, MaskPrompt, PointPrompt

    if prompt["type"] == "box":
        return BoxPrompt(prompt["z"], prompt["y0"], prompt["x0"], prompt["y1"], prompt["x1"])
    if prompt["type"] == "mask":
        return MaskPrompt(prompt["z"], decode_rle(prompt["rle"], (shape[1], shape[2])))
    return PointPrompt(prompt["z"], prompt["y"], prompt["x"])


class _SliceStream:
    """Publishes one ``slice`` event per finished slice and keeps the running job's slice log."""

    def __init__(self, job: PropagationJob, worker: str, heartbeat: _Heartbeat) -> None:
        self.job = job
        self.worker = worker
        self.heartbeat = heartbeat
        self.shape = job.case.volume.shape_zyx
        self.done = self.done_up = self.done_down = 0
        low, high = job.options.get("z_min", 0), job.options.get("z_max", self.shape[0] - 1)
        # The object's extent is unknown until it ends: progress is relative to the slices it may reach.
        self.expected = max(1, high - low + 1)

    def publish(self, z: int, mask: np.ndarray, direction: str) -> None:
        _check_still_mine(self.job.pk, self.worker)
        self.done += 1
        self.done_up += direction == "up"
        self.done_down += direction == "down"
        if self.done == 1:
            PropagationJob.objects.filter(pk=self.job.pk).update(first_slice_at=timezone.now())
        self.heartbeat.slices_done = self.done
        self.heartbeat.progress = self.done / self.expected
        rle = encode_rle(mask)
        live_state.append_slice(self.job.pk, {"z": int(z), "rle": rle, "direction": direction})
        events.slice_done(
            self.job.case_id,
            {
                "job": self.job.pk,
                "label": self.job.options.get("label_class"),
                "label_value": self.job.label_value,
                "z": int(z),
                "rle": rle,
                "shape": [self.shape[1], self.shape[2]],
                "direction": direction,
                "done": self.done,
                "done_up": self.done_up,
                "done_down": self.done_down,
                "progress": min(self.done / self.expected, 0.99),
            },
        )


def _stream_steps(steps: Iterator[Any], mask: np.ndarray, stream: _SliceStream) -> np.ndarray:
    """Write each engine step into ``mask`` (its slice's new content) and publish it."""
    for step in steps:
        mask[step.z] = step.mask
        stream.publish(int(step.z), step.mask, step.direction)
    return mask


def _run_propagate(
    job: PropagationJob,
    engine: Any,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    stream: _SliceStream,
    should_stop: Callable[[], bool],
) -> np.ndarray:
    prompt = _engine_prompt(job.prompt, volume.shape)
    bounds = {key: job.options[key] for key in ("z_min", "z_max") if job.options.get(key) is not None}
    steps = engine.propagate(volume, spacing, prompt, should_stop=should_stop, **bounds)
    # The union of the streamed slices is exactly what engine.segment returns for this prompt.
    return _stream_steps(steps, np.zeros(volume.shape, dtype=bool), stream)


def _run_refine(
    job: PropagationJob,
    engine: Any,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    base: np.ndarray,
    stream: _SliceStream,
    should_stop: Callable[[], bool],
) -> np.ndarray:
    from ml.engine import Click

    old = base == job.label_value
    shape = volume.shape
    clicks = [Click(c["z"], c["y"], c["x"], positive=c["positive"]) for c in job.prompt.get("clicks", [])]
    edited = {
        item["z"]: decode_rle(item["rle"], (shape[1], shape[2]))
        for item in job.prompt.get("edited_slices", [])
    }
    anchor = {
        key: job.options[key] for key in ("anchor_z", "z_min", "z_max") if job.options.get(key) is not None
    }
    steps = engine.refine_steps(volume, spacing, old, clicks, edited, should_stop=should_stop, **anchor)
    # Slices the refinement does not reach keep their old content (as in engine.refine).
    return _stream_steps(steps, old.copy(), stream)


def _labels_of(revision_id: int | None, case: Case) -> np.ndarray:
    if revision_id is None:
        return np.zeros(case.volume.shape_zyx, dtype=np.uint8)
    return revisions.read_label_volume(
        SegmentationRevision.objects.select_related("case__volume").get(pk=revision_id)
    )


def _rebase_target(case: Case, job: PropagationJob) -> SegmentationRevision | None:
    """The revision to merge onto: the current one, provided nothing between the job's base and it changed
    the job's label; otherwise Conflict."""
    current = case.current_revision
    node = current
    hops = 0
    while node is not None and node.pk != job.base_revision_id and hops < 200:
        if node.changed_label is None or node.changed_label == job.label_value:
            break
        node, hops = node.parent, hops + 1
    reached_base = (node is None and job.base_revision_id is None) or (
        node is not None and node.pk == job.base_revision_id
    )
    if not reached_base:
        raise Conflict(
            "The case's segmentation of this label changed while the job ran; nothing was saved.",
            code="revision_conflict",
            extra={"current_revision": case.current_revision_id},
        )
    return current


def _finish(job: PropagationJob, worker: str, mask: np.ndarray) -> SegmentationRevision:
    """Merge the mask into a new revision and mark the job succeeded, all in one transaction."""
    replace = job.kind == PropagationKind.REFINE
    written: list[str] = []
    try:
        with transaction.atomic():
            case = _locked_case(job.case)
            if job.label_value in (case.locked_labels or []):
                raise Conflict(
                    "The label was locked while the job ran; nothing was saved.", code="label_locked"
                )
            parent = _rebase_target(case, job)
            base = _labels_of(parent.pk if parent else None, case)
            merged = merge_label(base, mask, job.label_value, replace=replace)
            finished = PropagationJob.objects.filter(
                pk=job.pk, status=JobStatus.RUNNING, worker=worker, cancel_requested=False
            ).update(status=JobStatus.SUCCEEDED, finished_at=timezone.now(), progress=1.0)
            if not finished:
                raise JobStopped()
            source = RevisionSource.REFINEMENT if replace else RevisionSource.PROPAGATION
            revision = revisions.create_revision(
                case,
                merged,
                author=job.user,
                source=source,
                parent=parent,
                changed_label=job.label_value,
                job=job,
                message=f"{job.kind} job {job.pk}",
            )
            written.append(revision.file.name)
            PropagationJob.objects.filter(pk=job.pk).update(
                result_revision=revision, slices_done=F("slices_done")
            )
            job.refresh_from_db()
            events.job_done(case.pk, job_payload(job), revision.pk)
            events.revision_changed(case.pk, revision.pk)
    except BaseException:
        # create_revision wrote the label file before the row: a rolled-back transaction must take it along.
        storage.delete_files(written)
        raise
    return revision


def _end_stopped(job_id: int, worker: str) -> None:
    """Record why a job stopped early (cancel or supersede) if it is still ours."""
    with transaction.atomic():
        row = PropagationJob.objects.filter(pk=job_id, status=JobStatus.RUNNING, worker=worker)
        job = row.first()
        if job is None:
            return  # taken over by the sweep or already ended: nothing of ours to record
        status = JobStatus.SUPERSEDED if job.superseded_by_id else JobStatus.CANCELLED
        row.update(status=status, finished_at=timezone.now())
        job.refresh_from_db()
        events.job_cancelled(job.case_id, job_payload(job))


def _fail(job_id: int, worker: str | None, error: str) -> None:
    with transaction.atomic():
        row = PropagationJob.objects.filter(pk=job_id, status__in=ACTIVE_JOB_STATUSES)
        if worker is not None:
            row = row.filter(worker=worker)
        if not row.update(status=JobStatus.FAILED, error=error[:2000], finished_at=timezone.now()):
            return
        job = PropagationJob.objects.get(pk=job_id)
        events.job_failed(job.case_id, job_payload(job), job.error)


def run_job(job_id: int, worker: str) -> str:
    """Run one job in this worker process (the Celery task's whole body). Returns the final status."""
    try:
        loaded = get_engine()  # before the claim: loading time must not count against the heartbeat
    except Exception as exc:
        # Not transient (bad weights file, unknown engine name): fail the job instead of re-sending it forever.
        logger.exception("the propagation engine could not be loaded")
        if _claim(job_id, worker):
            _fail(job_id, worker, f"the propagation engine could not be loaded: {exc}")
            dispatch_pending()
        return JobStatus.FAILED
    if not _claim(job_id, worker):
        logger.info("job %s is not queued any more; another worker has it or it ended", job_id)
        return "skipped"
    job = PropagationJob.objects.select_related("case__volume", "case__project").get(pk=job_id)
    options = {**job.options, "engine": loaded.name, "engine_note": loaded.note, "worker_pid": os.getpid()}
    PropagationJob.objects.filter(pk=job_id).update(options=options)
    job.options = options
    live_state.reset(job_id)
    events.job_started(job.case_id, job_payload(job))
    heartbeat = _Heartbeat(job_id, worker)
    heartbeat.start()
    last_check = [0.0]
    stop_seen = [False]

    def should_stop() -> bool:
        # The engine polls before every predictor call: a cheap indexed read, at most every 10 ms.
        now = time.monotonic()
        if stop_seen[0] or now - last_check[0] < 0.01:
            return stop_seen[0]
        last_check[0] = now
        try:
            _check_still_mine(job_id, worker)
        except JobStopped:
            stop_seen[0] = True
        return stop_seen[0]

    try:
        volume = cases.read_volume_array(job.case.volume)
        spacing = job.case.volume.spacing_zyx
        if job.kind == PropagationKind.REFINE:
            base = _labels_of(job.base_revision_id, job.case)
            stream = _SliceStream(job, worker, heartbeat)
            mask = _run_refine(job, loaded.engine, volume, spacing, base, stream, should_stop)
        else:
            stream = _SliceStream(job, worker, heartbeat)
            mask = _run_propagate(job, loaded.engine, volume, spacing, stream, should_stop)
        if stop_seen[0]:
            raise JobStopped()  # the engine ended its stream early because we asked it to
        _check_still_mine(job_id, worker)
        _finish(job, worker, mask)
        status = JobStatus.SUCCEEDED
    except JobStopped:
        _end_stopped(job_id, worker)
        status = "stopped"
    except Conflict as exc:
        _fail(job_id, worker, exc.message)
        status = JobStatus.FAILED
    except Exception as exc:
        logger.exception("propagation job %s failed", job_id)
        _fail(job_id, worker, f"{type(exc).__name__}: {exc}")
        status = JobStatus.FAILED
    finally:
        heartbeat.stop()
        live_state.discard(job_id)
    dispatch_pending()
    return str(status)


def _lost_worker_reason(job: PropagationJob) -> str:
    return f"worker {job.worker or '?'} stopped responding (attempt {job.attempts} of {MAX_ATTEMPTS})"


def _requeued_after_lost_worker(job: PropagationJob) -> None:
    events.job_retrying(job.case_id, job_payload(job), job.error)
    live_state.discard(job.pk)


def _failed_after_lost_worker(job: PropagationJob) -> None:
    events.job_failed(job.case_id, job_payload(job), job.error)
    live_state.discard(job.pk)


def sweep_stale_jobs() -> dict[str, list[int]]:
    """Retry (once) or fail running jobs whose worker stopped beating; re-send lost dispatch messages."""
    now = timezone.now()
    swept = heartbeats.sweep_stale(
        PropagationJob,
        running=JobStatus.RUNNING,
        requeue=lambda job: {
            "status": JobStatus.QUEUED,
            "claimed_at": None,
            "worker": "",
            "error": _lost_worker_reason(job),
            "heartbeat_at": None,
            "cancel_requested": False,
        },
        fail=lambda job: {
            "status": JobStatus.FAILED,
            "error": f"{_lost_worker_reason(job)}; giving up",
            "finished_at": now,
        },
        after_requeue=_requeued_after_lost_worker,
        after_fail=_failed_after_lost_worker,
        max_attempts=MAX_ATTEMPTS,
    )
    result: dict[str, list[int]] = {"retried": swept.retried, "failed": swept.failed, "redispatched": []}
    lost_before = now - timedelta(seconds=redispatch_seconds())
    for job_id in PropagationJob.objects.filter(
        status=JobStatus.QUEUED, claimed_at__lt=lost_before
    ).values_list("pk", flat=True):
        # A duplicate message is harmless (the claim runs a job once); a lost one would strand the job.
        if PropagationJob.objects.filter(
            pk=job_id, status=JobStatus.QUEUED, claimed_at__lt=lost_before
        ).update(claimed_at=now):
            _enqueue(job_id)
            result["redispatched"].append(job_id)
    if result["retried"] or result["failed"]:
        dispatch_pending()
    return result


class Sweeper(heartbeats.PeriodicSweeper):
    """Runs ``sweep_stale_jobs`` every few seconds in a worker process (started by live_tasks)."""

    def __init__(self, interval: float) -> None:
        super().__init__("propagation-sweeper", sweep_stale_jobs, interval)
