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

Modules: ``checks`` (input checks, who may edit), ``jobs`` (API-facing creation, refinement anchors, cancel),
``queue`` (fair dispatch, queue positions, job payload, the stale-job sweep), ``edits`` (label merging,
manual edits, undo/redo, the reconnect state), ``runner`` (the worker: engine, claim, heartbeat, run, finish).
Callers use the names re-exported here. ``get_engine`` may be replaced on this package (``run_job`` looks it
up here); tests replace ``queue._enqueue`` to run jobs in-process.
"""

from __future__ import annotations

from annotator.services.propagation.checks import (
    EDITABLE_STATUSES,
    MAX_CLICKS,
    EditTarget,
    check_can_edit,
    check_clicks,
    check_edited_slices,
    check_prompt,
)
from annotator.services.propagation.edits import case_state, merge_label, move_revision, save_manual_edit
from annotator.services.propagation.jobs import (
    cancel_job,
    get_job,
    refinement_anchor,
    start_propagation,
    start_refinement,
)
from annotator.services.propagation.queue import (
    MAX_ATTEMPTS,
    Sweeper,
    dispatch_pending,
    heartbeat_seconds,
    job_payload,
    jobs_per_user,
    queue_positions,
    redispatch_seconds,
    stale_seconds,
    sweep_stale_jobs,
)
from annotator.services.propagation.runner import JobStopped, LoadedEngine, get_engine, run_job

__all__ = [
    "EDITABLE_STATUSES",
    "MAX_ATTEMPTS",
    "MAX_CLICKS",
    "EditTarget",
    "JobStopped",
    "LoadedEngine",
    "Sweeper",
    "cancel_job",
    "case_state",
    "check_can_edit",
    "check_clicks",
    "check_edited_slices",
    "check_prompt",
    "dispatch_pending",
    "get_engine",
    "get_job",
    "heartbeat_seconds",
    "job_payload",
    "jobs_per_user",
    "merge_label",
    "move_revision",
    "queue_positions",
    "redispatch_seconds",
    "refinement_anchor",
    "run_job",
    "save_manual_edit",
    "stale_seconds",
    "start_propagation",
    "start_refinement",
    "sweep_stale_jobs",
]
