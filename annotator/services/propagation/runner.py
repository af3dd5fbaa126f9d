"""The worker side: engine loading, claiming a job, running it with a heartbeat while streaming slices, and
finishing it into a revision (or failing / stopping it)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from annotator import events
from annotator.maskcodec import decode_rle, encode_rle
from annotator.models import (
    ACTIVE_JOB_STATUSES,
    Case,
    JobStatus,
    PropagationJob,
    PropagationKind,
    RevisionSource,
    SegmentationRevision,
)
from annotator.services import cases, heartbeats, live_state, revisions, storage
from annotator.services.errors import Conflict
from annotator.services.propagation.checks import locked_case
from annotator.services.propagation.edits import merge_label
from annotator.services.propagation.queue import dispatch_pending, job_payload

logger = logging.getLogger(__name__)


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


def _current_get_engine() -> Callable[[], LoadedEngine]:
    """``get_engine`` as the package exposes it now: workers and tests replace ``propagation.get_engine``
    (e.g. with a slowed engine) and every job must then use the replacement."""
    from annotator.services import propagation

    return propagation.get_engine


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
            case = locked_case(job.case)
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
        loaded = (
            _current_get_engine()()
        )  # before the claim: loading time must not count against the heartbeat
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
