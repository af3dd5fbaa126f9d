"""Importing uploads (DICOM series, NIfTI, NRRD, zips of them, optional label file) as cases.

``create_import_job`` (web request) checks limits, stores the uploaded files in media and enqueues
``annotator.tasks.run_import`` on the ``io`` queue after commit. ``run_import_job`` (worker) claims the job
with a conditional update, reads the upload with ``annotator.imaging.read_upload`` while reporting progress
on the row, and creates one case per volume: each case all or nothing, bad files listed per file.

While it runs the worker refreshes ``heartbeat_at``; ``sweep_stale_imports`` (run by io workers and on
status reads) queues an import whose worker died once more, then fails it. A repeated run skips the volumes
an earlier attempt already turned into cases, so nothing is imported twice and nothing saved is lost.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import get_valid_filename

from annotator.imaging import (
    FileError,
    ImportLimits,
    LoadedVolume,
    VolumeImportError,
    align_label,
    read_upload,
)
from annotator.models import Case, ImportJob, ImportStatus, Project
from annotator.services import audit, cases, heartbeats, storage
from annotator.services.access import AnyUser
from annotator.services.errors import InvalidInput, NotFound, TooLarge

logger = logging.getLogger(__name__)

LABEL_SUBDIR = "label"
# Progress split: reading/decoding the upload, then writing the cases.
_READ_SHARE = 0.8
# Progress is written at most this often (each write is a database transaction).
_PROGRESS_INTERVAL_SECONDS = 0.3


def import_limits() -> ImportLimits:
    return ImportLimits(
        max_upload_bytes=settings.PROPLABEL_MAX_UPLOAD_BYTES,
        max_uncompressed_bytes=settings.PROPLABEL_MAX_UNCOMPRESSED_BYTES,
        max_compression_ratio=settings.PROPLABEL_MAX_COMPRESSION_RATIO,
        max_files=settings.PROPLABEL_MAX_ARCHIVE_FILES,
        max_voxels=settings.PROPLABEL_MAX_VOXELS,
    )


def _record_refused_job(
    actor: AnyUser, project: Project, names: list[str], message: str, code: str, upload_bytes: int = 0
) -> ImportJob:
    """A failed job for an upload refused before it was stored, so the refusal shows in the import history."""
    now = timezone.now()
    job = ImportJob.objects.create(
        project=project,
        created_by=actor if actor.is_authenticated else None,
        status=ImportStatus.FAILED,
        error=message,
        error_code=code,
        upload_names=names,
        upload_bytes=upload_bytes,
        started_at=now,
        finished_at=now,
    )
    audit.record(actor, "import.refused", project=project, obj=job, data={"code": code, "files": names[:50]})
    return job


def _check_label_value_map(project: Project, raw: Any) -> dict[str, int] | None:
    """``{"<value in the file>": <project label value or 0>}``; values absent from the map are refused."""
    if raw in (None, "", {}):
        return None
    if not isinstance(raw, dict):
        raise InvalidInput(
            "label_value_map must map file label values to project label values.", code="invalid_label_map"
        )
    known = set(project.label_classes.values_list("value", flat=True)) | {0}
    clean: dict[str, int] = {}
    for source, target in raw.items():
        try:
            source_value, target_value = int(source), int(target)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                "label_value_map keys and values must be integers.", code="invalid_label_map"
            ) from exc
        if not 0 <= source_value <= 65535 or target_value not in known:
            raise InvalidInput(
                f"label_value_map sends {source_value} to {target_value}, which is not a label class of the project.",
                code="invalid_label_map",
            )
        clean[str(source_value)] = target_value
    return clean


def create_import_job(
    actor: AnyUser,
    project: Project,
    files: Sequence[File],
    *,
    label_file: File | None = None,
    label_value_map: dict[str, Any] | None = None,
    drop_unmapped_labels: bool = False,
    enqueue: bool = True,
) -> ImportJob:
    """Store an upload and queue its import. Refusals (nothing sent, over the size limit) raise after
    recording a failed ImportJob with the reason; content problems are found by the worker."""
    names = [Path(file.name or "upload").name for file in files]
    label_names = [Path(label_file.name or "label").name] if label_file is not None else []
    names_with_label = [*names, *label_names]
    total = sum(file.size or 0 for file in files) + (label_file.size or 0 if label_file is not None else 0)
    if not files:
        message = (
            "The upload contained no image files." if label_file is None else "A label file needs its image."
        )
        _record_refused_job(actor, project, names_with_label, message, "nothing_to_import", total)
        raise InvalidInput(message, code="nothing_to_import")
    limit = settings.PROPLABEL_MAX_UPLOAD_BYTES
    if total > limit:
        message = f"The upload is {total / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB."
        job = _record_refused_job(actor, project, names_with_label, message, "too_large", total)
        raise TooLarge(message, code="too_large", extra={"import_job": job.pk})
    value_map = _check_label_value_map(project, label_value_map)

    upload_dir = storage.new_folder(storage.UPLOADS_DIR)
    try:
        # One sub-folder per file keeps the original names (case names come from them) without clashes.
        for index, file in enumerate(files):
            storage.save_file(f"{upload_dir}/{index:05d}/{_safe_name(file.name, 'upload')}", file)
        label_name = ""
        if label_file is not None:
            label_name = _safe_name(label_file.name, "label")
            storage.save_file(f"{upload_dir}/{LABEL_SUBDIR}/{label_name}", label_file)
        with transaction.atomic():
            job = ImportJob.objects.create(
                project=project,
                created_by=actor if actor.is_authenticated else None,
                upload_dir=upload_dir,
                upload_names=names,
                label_file_name=label_name,
                upload_bytes=total,
                options={
                    "label_value_map": value_map,
                    "drop_unmapped_labels": bool(drop_unmapped_labels),
                },
            )
            audit.record(
                actor,
                "import.queued",
                project=project,
                obj=job,
                data={
                    "files": names[:50],
                    "file_count": len(names),
                    "label_file": label_name,
                    "bytes": total,
                },
            )
            if enqueue:
                transaction.on_commit(lambda: enqueue_import(job.pk))
    except BaseException:
        storage.delete_folder(upload_dir)
        raise
    return job


def _safe_name(name: str | None, fallback: str) -> str:
    base = Path(name or "").name
    try:
        return get_valid_filename(base) or fallback
    except Exception:  # get_valid_filename raises SuspiciousFileOperation for names like ".."
        return fallback


def enqueue_import(job_id: int) -> None:
    from annotator.tasks import run_import

    run_import.delay(job_id)


def get_import_job(project_ids: Any, job_id: int) -> ImportJob:
    # Cheap when nothing is stale; makes a dead worker visible even when no io worker is alive.
    sweep_stale_imports()
    job = ImportJob.objects.filter(pk=job_id, project_id__in=project_ids).select_related("project").first()
    if job is None:
        raise NotFound("Import job not found.", code="not_found")
    return job


# --- the worker side --------------------------------------------------------------------------------------


class _ProgressWriter:
    """Writes job progress to its row, throttled, never going backwards."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.last_written = 0.0
        self.last_time = 0.0

    def __call__(self, fraction: float) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        now = time.monotonic()
        if fraction <= self.last_written or (
            now - self.last_time < _PROGRESS_INTERVAL_SECONDS and fraction < 1.0
        ):
            return
        self.last_written, self.last_time = fraction, now
        ImportJob.objects.filter(pk=self.job_id, status=ImportStatus.RUNNING).update(
            progress=round(fraction, 4), heartbeat_at=timezone.now()
        )

    def scaled(self, start: float, end: float) -> Callable[[float], None]:
        return lambda fraction: self(start + (end - start) * fraction)


def _claim(job_id: int) -> bool:
    # A conditional update is atomic in every database: of two workers handed the same message, one wins.
    now = timezone.now()
    claimed = ImportJob.objects.filter(pk=job_id, status=ImportStatus.QUEUED).update(
        status=ImportStatus.RUNNING,
        started_at=now,
        heartbeat_at=now,
        attempts=F("attempts") + 1,
        progress=0.0,
    )
    return claimed == 1


def _finish(
    job: ImportJob,
    status: str,
    *,
    error: str = "",
    error_code: str = "",
    file_errors: list[dict[str, str]] | None = None,
    warnings: list[str] | None = None,
    case_ids: list[int] | None = None,
) -> None:
    with transaction.atomic():
        ImportJob.objects.filter(pk=job.pk).update(
            status=status,
            progress=1.0,
            error=error,
            error_code=error_code,
            file_errors=file_errors or [],
            warnings=warnings or [],
            finished_at=timezone.now(),
        )
        _record_end(job, status, error, error_code, case_ids or [], len(file_errors or []))


def _record_end(
    job: ImportJob, status: str, error: str, error_code: str, case_ids: list[int], file_errors: int
) -> None:
    """The ``import.<status>`` audit event of a job that ended (in the worker, or by the stale sweep)."""
    audit.record(
        job.created_by,
        f"import.{status}",
        project=job.project,
        obj=job,
        data={"error": error, "code": error_code, "cases": case_ids, "file_errors": file_errors},
    )


def _upload_paths(job: ImportJob) -> tuple[list[Path], Path | None]:
    root = storage.local_path(job.upload_dir)
    image_paths = sorted(
        path for folder in sorted(root.iterdir()) if folder.name != LABEL_SUBDIR for path in folder.iterdir()
    )
    label_path = root / LABEL_SUBDIR / job.label_file_name if job.label_file_name else None
    return image_paths, label_path


def _read_label(job: ImportJob, label_path: Path, loaded: LoadedVolume) -> np.ndarray:
    value_map: dict[str, int] | None = job.options.get("label_value_map")
    if not value_map:
        allowed = list(job.project.label_classes.values_list("value", flat=True))
        return align_label(label_path, loaded, allowed)
    label = align_label(label_path, loaded, None)
    lookup = np.zeros(256, dtype=np.uint8)
    for source, target in value_map.items():
        if int(source) <= 255:
            lookup[int(source)] = target
    present = {int(value) for value in np.unique(label)} - {0}
    unmapped = sorted(present - {int(source) for source in value_map})
    if unmapped and not job.options.get("drop_unmapped_labels"):
        raise VolumeImportError(
            f"{label_path.name} uses label values {unmapped[:20]} that the label map does not translate.",
            "label_unknown_values",
        )
    return lookup[label]


def run_import_job(job_id: int) -> None:
    """Run a queued import (called by the Celery task). Running it twice is harmless: the claim fails."""
    if not _claim(job_id):
        logger.info("import job %s is not queued any more; nothing to do", job_id)
        return
    job = ImportJob.objects.select_related("project", "created_by").get(pk=job_id)
    heartbeat = heartbeats.start_row_heartbeat(
        ImportJob.objects.filter(pk=job_id, status=ImportStatus.RUNNING), f"import-{job_id}-heartbeat"
    )
    work_dir = Path(tempfile.mkdtemp(prefix=f"import-{job.pk}-", dir=_work_root()))
    try:
        _import(job, work_dir)
    except Exception as exc:
        logger.exception("import job %s failed unexpectedly", job.pk)
        _finish(
            job,
            ImportStatus.FAILED,
            error=f"The import failed unexpectedly ({type(exc).__name__}).",
            error_code="internal_error",
        )
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
        # The originals are not kept: DICOM files a case needs were copied to sources/ by then.
        storage.delete_folder(job.upload_dir)


def _work_root() -> str:
    root = Path(settings.VAR_DIR) / "work"
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


class _PathScrubber:
    """Removes server folders from messages: users see file names, never where the server keeps them."""

    def __init__(self, *roots: Path) -> None:
        # Longest first, so a folder inside another is replaced before its parent.
        self.roots = sorted({str(root) for root in roots}, key=len, reverse=True)

    def __call__(self, message: str) -> str:
        for root in self.roots:
            message = message.replace(root + "/", "").replace(root, "")
        return message

    def file_error(self, error: FileError) -> dict[str, str]:
        return {"name": self(error.name), "message": self(error.message), "code": error.code}


def _import(job: ImportJob, work_dir: Path) -> None:
    progress = _ProgressWriter(job.pk)
    image_paths, label_path = _upload_paths(job)
    scrub = _PathScrubber(
        *(path.parent for path in image_paths), storage.local_path(job.upload_dir), work_dir
    )
    try:
        result = read_upload(
            image_paths, work_dir, import_limits(), progress=progress.scaled(0.0, _READ_SHARE)
        )
    except VolumeImportError as exc:
        # When no file was usable the imaging layer attaches every per-file reason to the exception.
        details = [scrub.file_error(error) for error in exc.file_errors]
        _finish(job, ImportStatus.FAILED, error=scrub(exc.message), error_code=exc.code, file_errors=details)
        return
    file_errors = [scrub.file_error(error) for error in result.errors]
    if label_path is not None and len(result.volumes) != 1:
        _finish(
            job,
            ImportStatus.FAILED,
            error=f"A label file can only come with exactly one image volume; this upload holds {len(result.volumes)}.",
            error_code="label_needs_one_volume",
            file_errors=file_errors,
        )
        return

    created: list[Case] = []
    warnings: list[str] = []
    # Cases an earlier attempt of this job saved before its worker died: read_upload returns the volumes in
    # the same order every time, so the first N volumes of a name are the N cases already there.
    earlier: dict[str, list[Case]] = {}
    for case in job.cases.order_by("pk"):
        earlier.setdefault(case.name, []).append(case)
    for index, loaded in enumerate(result.volumes):
        saved = earlier.get(loaded.name[:255])
        if saved:
            created.append(saved.pop(0))
            warnings.extend(f"{loaded.name}: {warning}" for warning in loaded.warnings)
            continue
        try:
            label = _read_label(job, label_path, loaded) if label_path is not None else None
            case = cases.create_case_with_volume(
                job.project, loaded, actor=job.created_by, import_job=job, label=label
            )
        except VolumeImportError as exc:
            file_errors.append({"name": loaded.name, "message": scrub(exc.message), "code": exc.code})
        else:
            created.append(case)
            warnings.extend(f"{loaded.name}: {warning}" for warning in loaded.warnings)
        progress(_READ_SHARE + (1.0 - _READ_SHARE) * (index + 1) / len(result.volumes))

    case_ids = [case.pk for case in created]
    if not file_errors:
        _finish(job, ImportStatus.SUCCEEDED, warnings=warnings, case_ids=case_ids)
    elif created:
        _finish(
            job,
            ImportStatus.PARTIAL,
            error=f"{len(file_errors)} of the uploaded files or series could not be imported.",
            error_code="partial",
            file_errors=file_errors,
            warnings=warnings,
            case_ids=case_ids,
        )
    else:
        _finish(
            job,
            ImportStatus.FAILED,
            error=file_errors[0]["message"],
            error_code=file_errors[0]["code"],
            file_errors=file_errors,
        )


# --- imports whose worker died ----------------------------------------------------------------------------

WORKER_LOST_MESSAGE = "The worker stopped while importing; upload again."


def _requeued(job: ImportJob) -> None:
    logger.warning("import job %s lost its worker; queued once more", job.pk)
    transaction.on_commit(lambda: enqueue_import(job.pk))


def _failed_fields(job: ImportJob) -> dict[str, Any]:
    saved = job.cases.count()
    if saved:
        message = (
            f"The worker stopped while importing; {saved} case{'s were' if saved != 1 else ' was'} imported, "
            "upload the remaining files again."
        )
        status = ImportStatus.PARTIAL
    else:
        message, status = WORKER_LOST_MESSAGE, ImportStatus.FAILED
    return {
        "status": status,
        "error": message,
        "error_code": "worker_lost",
        "progress": 1.0,
        "finished_at": timezone.now(),
    }


def _failed(job: ImportJob) -> None:
    _record_end(job, job.status, job.error, job.error_code, list(job.cases.values_list("pk", flat=True)), 0)
    upload_dir = job.upload_dir
    transaction.on_commit(lambda: storage.delete_folder(upload_dir))


def sweep_stale_imports() -> dict[str, list[int]]:
    """Queue once more (or, the second time, fail) running imports whose worker stopped beating.

    Cases the dead worker already saved stay; a repeated run skips them, and a failed job lists them.
    """
    swept = heartbeats.sweep_stale(
        ImportJob,
        running=ImportStatus.RUNNING,
        requeue=lambda job: {
            "status": ImportStatus.QUEUED,
            "heartbeat_at": None,
            "error": "The worker stopped while importing; trying once more.",
            "error_code": "worker_lost",
        },
        fail=_failed_fields,
        after_requeue=_requeued,
        after_fail=_failed,
    )
    return {"retried": swept.retried, "failed": swept.failed}
