"""Label merging, manual edits, undo/redo along the revision history, and the state a (re)connecting browser
needs."""

from __future__ import annotations

from typing import Any

import numpy as np
from django.db import transaction
from django.utils import timezone

from annotator import events
from annotator.models import (
    ACTIVE_JOB_STATUSES,
    Case,
    JobStatus,
    PropagationJob,
    RevisionSource,
    SegmentationRevision,
)
from annotator.services import audit, live_state, revisions, storage, workflow
from annotator.services.access import AnyUser
from annotator.services.errors import Conflict, InvalidInput
from annotator.services.propagation.checks import (
    EditTarget,
    check_base_revision,
    check_can_edit,
    check_edited_slices,
    locked_case,
)
from annotator.services.propagation.jobs import supersede_active_jobs
from annotator.services.propagation.queue import job_payload, queue_positions


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
    case = locked_case(target.case)
    check_base_revision(case, base_revision)
    base = revisions.current_label_volume(case)
    mask = np.zeros(target.shape, dtype=bool)
    region = np.zeros(target.shape, dtype=bool)
    for z, slice_mask in edited.items():
        mask[z] = slice_mask
        region[z] = True
    merged = merge_label(base, mask, target.label.value, replace=True, region=region)
    # The user's own edit wins over a propagation of the same label still running on the old base.
    supersede_active_jobs(case, target.label.value, by=None)
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
    target = check_can_edit(user, case_id, None, label_required=False)
    with transaction.atomic():
        case = locked_case(target.case)
        if "base_revision" in data:
            check_base_revision(case, data.get("base_revision"))
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
        supersede_active_jobs(case, None, by=None)
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
