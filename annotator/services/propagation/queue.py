"""Job queueing: fair dispatch to the `gpu` queue, queue positions, the job payload, and the sweep that
retries or fails running jobs whose worker stopped beating (see the package docstring)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotator import events
from annotator.models import JobStatus, PropagationJob, PropagationKind
from annotator.services import heartbeats, live_state

logger = logging.getLogger(__name__)


MAX_ATTEMPTS = heartbeats.MAX_ATTEMPTS
# Re-exported: workers and tests tune the shared heartbeat through these names.
heartbeat_seconds = heartbeats.heartbeat_seconds
stale_seconds = heartbeats.stale_seconds
_setting = heartbeats._setting


def jobs_per_user() -> int:
    return max(1, int(_setting("PROPLABEL_JOBS_PER_USER", 1)))


def redispatch_seconds() -> float:
    """A dispatched job that no worker claimed for this long gets a fresh message (the first may be lost)."""
    return _setting("PROPLABEL_JOB_REDISPATCH_SECONDS", 120.0)


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
        # Read after ``job`` was: a queued job already gone from the queue was just claimed by a worker,
        # so it is at the front (``None`` here would contradict the status shown beside it).
        position = (positions if positions is not None else queue_positions()).get(job.pk, 0)

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
