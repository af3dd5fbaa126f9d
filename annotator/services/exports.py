"""Data set export jobs: nnU-Net v2 raw data set, per-case NIfTI label maps, DICOM SEG; one ZIP each.

``create_export_job`` (web request, managers only) checks that there is something to export, records an
ExportJob and enqueues ``annotator.tasks.run_export`` on the ``io`` queue after commit. ``run_export_job``
(worker) claims the job with a conditional update (queued -> running), loads the cases one at a time into
``annotator.exporting.ExportCase`` values for the pure writers, reports progress on the row, and streams the
ZIP to a file in media storage. A failure leaves no ZIP and no work folder behind, and the job says why.
While it runs the worker refreshes ``heartbeat_at``; ``sweep_stale_exports`` (run by io workers and on status
reads) queues an export whose worker died once more, then fails it (an export only writes when it ends).

Which labels are exported: for an approved case the revision its latest approval approved (the workflow
records it on the ``case.approved`` audit event), even if a late propagation result landed afterwards; for
cases included from other statuses their current revision. The revision used is recorded per case in
``ExportJob.options["result"]`` and in the ZIP's ``manifest.csv`` (NIfTI / DICOM SEG).
"""

from __future__ import annotations

import csv
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from annotator.exporting import (
    ExportCase,
    ExportError,
    LabelSpec,
    sanitize_identifier,
    write_case_label_nifti,
    write_dicom_seg,
    write_nnunet_dataset,
    zip_directory,
)
from annotator.exporting.types import validate_label_specs
from annotator.models import (
    AuditEvent,
    Case,
    CaseStatus,
    ExportFormat,
    ExportJob,
    ExportStatus,
    Membership,
    Project,
    Role,
    SegmentationRevision,
)
from annotator.services import audit, cases, heartbeats, revisions, storage
from annotator.services.access import AnyUser
from annotator.services.errors import Conflict, InvalidInput, NotFound

logger = logging.getLogger(__name__)

DEFAULT_STATUSES = [CaseStatus.APPROVED.value]
# Progress split: writing the cases, then zipping.
_WRITE_SHARE = 0.9
_PROGRESS_INTERVAL_SECONDS = 0.3


# --- the web side -----------------------------------------------------------------------------------------


def _check_statuses(raw: Any) -> list[str]:
    if raw in (None, "", []):
        return list(DEFAULT_STATUSES)
    if isinstance(raw, str):
        raw = [item for item in raw.split(",") if item]
    if not isinstance(raw, list | tuple):
        raise InvalidInput("statuses must be a list of case statuses.", code="invalid_statuses")
    unknown = sorted({str(item) for item in raw} - set(CaseStatus.values))
    if unknown:
        raise InvalidInput(
            f"Unknown case statuses {unknown}; expected some of {', '.join(CaseStatus.values)}.",
            code="invalid_statuses",
        )
    return [status for status in CaseStatus.values if status in {str(item) for item in raw}]


def _check_dataset_id(raw: Any, project: Project) -> int:
    if raw in (None, ""):
        # A stable default per project; nnU-Net ids are 1..999.
        return (project.pk - 1) % 999 + 1
    try:
        value = int(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidInput("dataset_id must be a number from 1 to 999.", code="invalid_dataset_id") from exc
    if isinstance(raw, bool) or not 1 <= value <= 999:
        raise InvalidInput("dataset_id must be a number from 1 to 999.", code="invalid_dataset_id")
    return value


def label_specs(project: Project) -> list[LabelSpec]:
    return [
        LabelSpec(value=int(label.value), name=label.name, color=label.color)
        for label in project.label_classes.order_by("value")
    ]


def cases_to_export(project: Project, fmt: str, options: dict[str, Any]) -> QuerySet[Case]:
    """The cases an export with ``options`` covers (ordered by id for a reproducible data set)."""
    queryset = Case.objects.filter(project=project, status__in=options["statuses"], volume__isnull=False)
    if options.get("case_ids"):
        queryset = queryset.filter(pk__in=options["case_ids"])
    if fmt == ExportFormat.DICOM_SEG:
        queryset = queryset.filter(volume__source_format="dicom")
    return queryset.select_related("volume").order_by("id")


def create_export_job(
    actor: AnyUser,
    project: Project,
    fmt: Any,
    *,
    statuses: Any = None,
    case_ids: Any = None,
    dataset_id: Any = None,
    dataset_name: Any = None,
    channel_name: Any = None,
    enqueue: bool = True,
) -> ExportJob:
    """Validate an export request of a project manager and queue it. Nothing to export is a 400, here."""
    if fmt not in ExportFormat.values:
        raise InvalidInput(
            f"Unknown export format {fmt!r}; expected one of {', '.join(ExportFormat.values)}.",
            code="invalid_format",
        )
    try:
        validate_label_specs(label_specs(project))
    except ExportError as exc:
        raise InvalidInput(str(exc), code="bad_label_classes") from exc
    ids: list[int] = []
    if case_ids not in (None, "", []):
        try:
            ids = sorted({int(value) for value in case_ids})
        except (TypeError, ValueError) as exc:
            raise InvalidInput("case_ids must be a list of case ids.", code="invalid_case") from exc
    options: dict[str, Any] = {
        "statuses": _check_statuses(statuses),
        "case_ids": ids,
        "dataset_id": _check_dataset_id(dataset_id, project),
        "dataset_name": str(dataset_name or project.name).strip()[:100] or "PropLabel",
        "channel_name": str(channel_name or "").strip()[:32],
    }
    count = cases_to_export(project, fmt, options).count()
    if count == 0:
        what = "DICOM-imported cases" if fmt == ExportFormat.DICOM_SEG else "cases"
        raise InvalidInput(
            f"There are no {what} with status {' or '.join(options['statuses'])} to export.",
            code="nothing_to_export",
        )
    with transaction.atomic():
        job = ExportJob.objects.create(
            project=project,
            created_by=actor if actor.is_authenticated else None,
            format=fmt,
            options=options,
            case_count=count,
        )
        audit.record(
            actor,
            "export.queued",
            project=project,
            obj=job,
            data={"format": fmt, "statuses": options["statuses"], "cases": count},
        )
        if enqueue:
            transaction.on_commit(lambda: enqueue_export(job.pk))
    return job


def enqueue_export(job_id: int) -> None:
    from annotator.export_tasks import run_export

    run_export.delay(job_id)


def get_export_job(user: AnyUser, job_id: int) -> ExportJob:
    """An export job of a project the user manages (others: not found)."""
    managed = Membership.objects.filter(user_id=getattr(user, "pk", None), role=Role.MANAGER).values(
        "project"
    )
    # Cheap when nothing is stale; makes a dead worker visible even when no io worker is alive.
    sweep_stale_exports()
    job = ExportJob.objects.filter(pk=job_id, project_id__in=managed).select_related("project").first()
    if job is None:
        raise NotFound("Export job not found.", code="not_found")
    return job


def download_path(job: ExportJob) -> Path:
    if job.status != ExportStatus.SUCCEEDED or not job.file:
        raise NotFound("The export is not ready.", code="export_not_ready")
    path = storage.local_path(job.file.name)
    if not path.is_file():
        raise NotFound("The export file is gone; export again.", code="export_file_missing")
    return path


def download_name(job: ExportJob) -> str:
    return Path(job.file.name).name


# --- the worker side --------------------------------------------------------------------------------------


class _Progress:
    """Throttled, monotonic progress writes on the job row."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.last_value = 0.0
        self.last_time = 0.0

    def __call__(self, fraction: float) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        now = time.monotonic()
        if fraction <= self.last_value or (
            now - self.last_time < _PROGRESS_INTERVAL_SECONDS and fraction < 1
        ):
            return
        self.last_value, self.last_time = fraction, now
        ExportJob.objects.filter(pk=self.job_id, status=ExportStatus.RUNNING).update(
            progress=round(fraction, 4), heartbeat_at=timezone.now()
        )

    def scaled(self, start: float, end: float) -> Callable[[float], None]:
        return lambda fraction: self(start + (end - start) * fraction)


def _claim(job_id: int) -> bool:
    # Conditional update: of two workers handed the same message only one moves queued -> running.
    now = timezone.now()
    return (
        ExportJob.objects.filter(pk=job_id, status=ExportStatus.QUEUED).update(
            status=ExportStatus.RUNNING,
            started_at=now,
            heartbeat_at=now,
            attempts=F("attempts") + 1,
            progress=0.0,
        )
        == 1
    )


def approved_revision_ids(case_ids: list[int]) -> dict[int, int | None]:
    """Case id -> the revision its latest approval approved (recorded by the workflow in the audit event).

    Approved cases cannot be edited, but a propagation job that started before the submission may still land
    a revision afterwards; the export must carry what the reviewer saw, not that late arrival.
    """
    approved: dict[int, int | None] = {}
    events = AuditEvent.objects.filter(verb="case.approved", case_id__in=case_ids).order_by("id")
    for case_id, data in events.values_list("case_id", "data"):
        approved[case_id] = (data or {}).get("revision")
    return approved


def _load_case(case: Case, revision_id: int | None) -> tuple[ExportCase, SegmentationRevision | None]:
    """The case as an ExportCase on its canonical grid, labelled by revision ``revision_id`` (None: empty)."""
    volume = case.volume
    revision = None
    try:
        image = cases.read_volume_array(volume)
        if revision_id is None:
            label = np.zeros(volume.shape_zyx, dtype=np.uint8)
        else:
            revision = SegmentationRevision.objects.select_related("case__volume").get(
                pk=revision_id, case=case
            )
            label = revisions.read_label_volume(revision)
    except (OSError, SegmentationRevision.DoesNotExist) as exc:
        raise ExportError(f"Case {case.name!r}: its stored image or labels could not be read.") from exc
    export_case = ExportCase(
        case_id=case.name or f"case{case.pk}",
        image=image,
        label=label,
        affine=np.asarray(volume.affine, dtype=np.float64),
        source_format=volume.source_format,  # type: ignore[arg-type]
        source_meta=volume.source_meta or {},
    )
    return export_case, revision


def _channel_name(job: ExportJob, queryset: QuerySet[Case]) -> str:
    if job.options.get("channel_name"):
        return str(job.options["channel_name"])
    modalities = {str(m or "").upper() for m in queryset.values_list("volume__modality", flat=True)}
    if modalities == {"CT"}:
        return "CT"  # nnU-Net normalises channels named CT with the data set's HU statistics
    if len(modalities) == 1 and "" not in modalities:
        return modalities.pop()
    return "image"


def _person_name(user: Any) -> str | None:
    """A DICOM PN ("Family^Given") from the user's real name; a bare username is not a person name."""
    if user is None or not (user.last_name or user.first_name):
        return None
    return f"{user.last_name}^{user.first_name}"


def _unique(identifier: str, used: set[str]) -> str:
    candidate, suffix = identifier, 2
    while candidate.lower() in used:
        candidate = f"{identifier}_{suffix}"
        suffix += 1
    used.add(candidate.lower())
    return candidate


def _write_manifest(folder: Path, rows: list[dict[str, Any]]) -> None:
    fields = ["case_id", "case_name", "status", "revision", "file", "note"]
    with (folder / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in fields})


def _export_folder(
    job: ExportJob, work_dir: Path, progress: Callable[[float], None]
) -> tuple[Path, list[dict[str, Any]]]:
    """Write the export into ``work_dir`` and return (folder to zip, per-case result rows)."""
    project = job.project
    labels = label_specs(project)
    queryset = cases_to_export(project, job.format, job.options)
    case_list = list(queryset)
    if not case_list:
        raise ExportError("None of the selected cases can be exported any more (status changed?).")
    total = len(case_list)
    rows: list[dict[str, Any]] = []
    approved = approved_revision_ids([case.pk for case in case_list])

    def chosen_revision(case: Case) -> tuple[int | None, str]:
        """The revision to export and, when it is not the current one, a note saying so."""
        if case.status == CaseStatus.APPROVED and approved.get(case.pk) is not None:
            revision_id = approved[case.pk]
            if revision_id != case.current_revision_id:
                return revision_id, "the approved revision; a newer one exists"
            return revision_id, ""
        return case.current_revision_id, "" if case.current_revision_id else "no revision: background only"

    def load(case: Case) -> tuple[ExportCase, SegmentationRevision | None, str]:
        revision_id, note = chosen_revision(case)
        export_case, revision = _load_case(case, revision_id)
        return export_case, revision, note

    def row_of(case: Case, revision: SegmentationRevision | None, file: str = "", note: str = "") -> None:
        rows.append(
            {
                "case_id": case.pk,
                "case_name": case.name,
                "status": case.status,
                "revision": revision.number if revision else "",
                "revision_id": revision.pk if revision else None,
                "file": file,
                "note": note,
            }
        )

    if job.format == ExportFormat.NNUNET:

        def lazily() -> Iterator[ExportCase]:
            for case in case_list:
                export_case, revision, note = load(case)
                row_of(case, revision, note=note)
                yield export_case

        dataset_dir = write_nnunet_dataset(
            work_dir,
            int(job.options["dataset_id"]),
            str(job.options["dataset_name"]),
            lazily(),
            labels,
            channel_name=_channel_name(job, queryset),
            progress=progress,
            num_cases=total,
            description=f"Exported by PropLabel from project {project.name!r} (export {job.pk}).",
        )
        return dataset_dir, rows

    folder = work_dir / sanitize_identifier(
        f"{project.name}_{'labels' if job.format == ExportFormat.NIFTI else 'dicom_seg'}_{job.pk}"
    )
    folder.mkdir(parents=True)
    used: set[str] = set()
    written = 0
    for index, case in enumerate(case_list):
        export_case, revision, note = load(case)
        identifier = _unique(sanitize_identifier(export_case.case_id), used)
        if job.format == ExportFormat.NIFTI:
            name = f"{identifier}.nii.gz"
            write_case_label_nifti(export_case, folder / name, labels)
            row_of(case, revision, name, note)
            written += 1
        elif revision is None or not np.any(export_case.label):
            # A SEG needs at least one segment; an empty label map is listed, not failed.
            row_of(case, revision, note="skipped: no labelled voxels")
        else:
            name = f"{identifier}.dcm"
            source_files = [storage.local_path(n) for n in export_case.source_meta.get("source_files", [])]
            author = _person_name(revision.author)
            try:
                write_dicom_seg(
                    export_case,
                    labels,
                    source_files,
                    folder / name,
                    series_description=f"PropLabel {project.name}"[:64],
                    content_creator_name=author,
                )
            except ExportError as exc:
                # One series that cannot carry a SEG (e.g. no StudyInstanceUID) must not sink the others;
                # the manifest and the job say which case was left out and why.
                row_of(case, revision, note=f"skipped: {exc}")
            else:
                row_of(case, revision, name, note)
                written += 1
        progress((index + 1) / total)
    if written == 0:
        reasons = "; ".join(str(row["note"]) for row in rows[:3])
        raise ExportError(f"None of the selected cases could be exported as DICOM SEG ({reasons}).")
    _write_manifest(folder, rows)
    return folder, rows


def _finish(job: ExportJob, status: str, **fields: Any) -> None:
    with transaction.atomic():
        ExportJob.objects.filter(pk=job.pk).update(status=status, finished_at=timezone.now(), **fields)
        _record_end(
            job, status, fields.get("error", ""), fields.get("case_count", 0), fields.get("size_bytes", 0)
        )


def _record_end(job: ExportJob, status: str, error: str, case_count: int, size_bytes: int) -> None:
    """The ``export.<status>`` audit event of a job that ended (in the worker, or by the stale sweep)."""
    audit.record(
        job.created_by,
        f"export.{status}",
        project=job.project,
        obj=job,
        data={"format": job.format, "error": error, "cases": case_count, "bytes": size_bytes},
    )


def run_export_job(job_id: int) -> None:
    """Run a queued export (the Celery task calls this). A second delivery of the message does nothing."""
    if not _claim(job_id):
        logger.info("export job %s is not queued any more; nothing to do", job_id)
        return
    job = ExportJob.objects.select_related("project", "created_by").get(pk=job_id)
    heartbeat = heartbeats.start_row_heartbeat(
        ExportJob.objects.filter(pk=job_id, status=ExportStatus.RUNNING), f"export-{job_id}-heartbeat"
    )
    progress = _Progress(job.pk)
    work_root = Path(settings.VAR_DIR) / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f"export-{job.pk}-", dir=work_root))
    zip_name = ""
    try:
        folder, rows = _export_folder(job, work_dir, progress.scaled(0.0, _WRITE_SHARE))
        zip_name = f"{storage.EXPORTS_DIR}/{uuid.uuid4().hex}/{folder.name}.zip"
        zip_path = zip_directory(folder, storage.local_path(zip_name))
        exported = [row for row in rows if row["file"] or job.format == ExportFormat.NNUNET]
        _finish(
            job,
            ExportStatus.SUCCEEDED,
            progress=1.0,
            file=zip_name,
            size_bytes=zip_path.stat().st_size,
            case_count=len(exported),
            error="",
            options={**job.options, "result": rows},
        )
    except ExportError as exc:
        _discard(zip_name)
        _finish(job, ExportStatus.FAILED, error=str(exc), file="")
    except Exception as exc:
        logger.exception("export job %s failed unexpectedly", job.pk)
        _discard(zip_name)
        _finish(
            job, ExportStatus.FAILED, error=f"The export failed unexpectedly ({type(exc).__name__}).", file=""
        )
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


def _discard(zip_name: str) -> None:
    if zip_name:
        storage.delete_folder(str(Path(zip_name).parent))


def delete_export_job(actor: AnyUser, job: ExportJob) -> None:
    """Remove a finished export and its ZIP (running jobs cannot be deleted)."""
    if job.status in (ExportStatus.QUEUED, ExportStatus.RUNNING):
        raise Conflict("The export is still running.", code="export_running")
    name = job.file.name if job.file else ""
    with transaction.atomic():
        audit.record(actor, "export.deleted", project=job.project, obj=job, data={"format": job.format})
        job.delete()
    transaction.on_commit(lambda: _discard(name))


# --- exports whose worker died ----------------------------------------------------------------------------

WORKER_LOST_MESSAGE = "The worker stopped while exporting; export again."


def _requeued(job: ExportJob) -> None:
    logger.warning("export job %s lost its worker; queued once more", job.pk)
    transaction.on_commit(lambda: enqueue_export(job.pk))


def _failed(job: ExportJob) -> None:
    _record_end(job, ExportStatus.FAILED, job.error, 0, 0)


def sweep_stale_exports() -> dict[str, list[int]]:
    """Queue once more (or, the second time, fail) running exports whose worker stopped beating."""
    swept = heartbeats.sweep_stale(
        ExportJob,
        running=ExportStatus.RUNNING,
        requeue=lambda job: {
            "status": ExportStatus.QUEUED,
            "heartbeat_at": None,
            "progress": 0.0,
            "error": "The worker stopped while exporting; trying once more.",
        },
        fail=lambda job: {
            "status": ExportStatus.FAILED,
            "error": WORKER_LOST_MESSAGE,
            "file": "",
            "finished_at": timezone.now(),
        },
        after_requeue=_requeued,
        after_fail=_failed,
    )
    return {"retried": swept.retried, "failed": swept.failed}
