"""Cases and their volumes: creation from a loaded image, assignment, locking, deletion, voxel access."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files import File
from django.db import transaction
from django.db.models import QuerySet

from annotator.imaging import LoadedVolume, decode_array, encode_array, intensity_stats, to_storage_dtype
from annotator.models import Case, ImportJob, Membership, Project, RevisionSource, Role, Volume
from annotator.services import audit, revisions, storage
from annotator.services.access import AnyUser, is_manager
from annotator.services.errors import Forbidden, InvalidInput


def _copy_source_files(source_meta: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Copy the DICOM files a volume was read from into media (export needs them for DICOM SEG).

    Returns the source_meta with ``source_files`` rewritten to storage names, and those names.
    """
    paths = source_meta.get("source_files")
    if not paths:
        return source_meta, []
    folder = storage.new_folder(storage.SOURCES_DIR)
    stored: list[str] = []
    try:
        for index, path in enumerate(paths):
            with Path(path).open("rb") as handle:
                stored.append(storage.save_file(f"{folder}/{index:05d}.dcm", File(handle)))
    except BaseException:
        storage.delete_folder(folder)
        raise
    return {**source_meta, "source_files": stored}, stored


def create_case_with_volume(
    project: Project,
    loaded: LoadedVolume,
    *,
    actor: AnyUser | None,
    name: str | None = None,
    import_job: ImportJob | None = None,
    label: np.ndarray | None = None,
) -> Case:
    """Create a Case with its Volume (and, given ``label``, its first revision): all of it or nothing.

    Files are written first; when anything fails afterwards every file written here is removed again, so
    an import never leaves a half case (rows or files) behind.
    """
    array = to_storage_dtype(loaded.array)
    data = encode_array(array)
    written: list[str] = []
    try:
        voxels_name = storage.save_bytes(storage.VOLUMES_DIR, data, ".raw.gz")
        written.append(voxels_name)
        source_meta, source_files = _copy_source_files(loaded.source_meta)
        written.extend(source_files)
        with transaction.atomic():
            case = Case.objects.create(
                project=project, name=(name or loaded.name)[:255], imported_from=import_job
            )
            Volume.objects.create(
                case=case,
                file=voxels_name,
                shape=list(array.shape),
                spacing=[float(value) for value in loaded.spacing],
                affine=np.asarray(loaded.affine, dtype=np.float64).tolist(),
                dtype=array.dtype.name,
                modality=loaded.modality,
                stats=intensity_stats(array),
                source_format=loaded.source_format,
                source_meta=source_meta,
                warnings=list(loaded.warnings),
                content_hash=storage.content_hash(data),
                size_bytes=len(data),
            )
            audit.record(
                actor,
                "case.created",
                project=project,
                case=case,
                obj=case,
                data={"name": case.name, "import_job": import_job.pk if import_job else None},
            )
            if label is not None:
                revision = revisions.create_revision(
                    case, label, author=actor, source=RevisionSource.IMPORT, message="imported label file"
                )
                written.append(revision.file.name)
    except BaseException:
        storage.delete_files(written)
        raise
    return case


def cases_for_listing(queryset: QuerySet[Case], filters: dict[str, Any]) -> QuerySet[Case]:
    """Apply the list filters of ``GET /api/cases/`` (project, status, assignee, reviewer)."""
    for key in ("project", "status", "assignee", "reviewer"):
        value = filters.get(key)
        if value in (None, ""):
            continue
        if key in ("assignee", "reviewer") and value == "none":
            queryset = queryset.filter(**{f"{key}__isnull": True})
        elif key == "status":
            statuses = [item for item in str(value).split(",") if item]
            queryset = queryset.filter(status__in=statuses)
        else:
            try:
                queryset = queryset.filter(**{f"{key}_id": int(value)})
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"Filter {key} must be an id.", code="invalid_filter") from exc
    return queryset.select_related("project", "assignee", "reviewer", "volume").order_by(
        "project_id", "name", "id"
    )


def _project_member(project: Project, user_id: Any, roles: tuple[str, ...], what: str) -> Any:
    if user_id is None:
        return None
    membership = Membership.objects.filter(project=project, user_id=user_id).select_related("user").first()
    if membership is None:
        raise InvalidInput(f"The {what} must be a member of the project.", code=f"{what}_not_member")
    if membership.role not in roles:
        raise InvalidInput(
            f"The {what} must have one of the roles {', '.join(roles)} in this project.",
            code=f"{what}_wrong_role",
        )
    return membership.user


def _check_locked_labels(project: Project, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    ):
        raise InvalidInput("locked_labels must be a list of label values.", code="invalid_locked_labels")
    known = set(project.label_classes.values_list("value", flat=True))
    unknown = sorted(set(value) - known)
    if unknown:
        raise InvalidInput(f"Unknown label values: {unknown}.", code="unknown_label")
    return sorted(set(value))


MANAGER_FIELDS = {"name", "assignee", "reviewer", "locked_labels"}
ASSIGNEE_FIELDS = {"locked_labels"}


@transaction.atomic
def update_case(actor: AnyUser, case: Case, changes: dict[str, Any]) -> Case:
    """Rename, assign, set the reviewer or lock labels. Managers may change all; the assignee only locks."""
    requested = set(changes) & MANAGER_FIELDS
    if is_manager(actor, case.project):
        allowed = MANAGER_FIELDS
    elif case.assignee_id == actor.pk:
        allowed = ASSIGNEE_FIELDS
    else:
        allowed = set()
    refused = requested - allowed
    if refused:
        raise Forbidden(
            f"You may not change {', '.join(sorted(refused))} of this case.", code="cannot_change_case"
        )
    case = Case.objects.select_for_update().get(pk=case.pk)
    changed: dict[str, Any] = {}
    if "name" in changes:
        name = str(changes["name"] or "").strip()
        if not name:
            raise InvalidInput("The case name must not be empty.", code="name_required")
        case.name = changed["name"] = name[:255]
    if "assignee" in changes:
        user = _project_member(case.project, changes["assignee"], (Role.ANNOTATOR, Role.MANAGER), "assignee")
        case.assignee = user
        changed["assignee"] = user.pk if user else None
    if "reviewer" in changes:
        user = _project_member(case.project, changes["reviewer"], (Role.REVIEWER, Role.MANAGER), "reviewer")
        case.reviewer = user
        changed["reviewer"] = user.pk if user else None
    if "locked_labels" in changes:
        case.locked_labels = changed["locked_labels"] = _check_locked_labels(
            case.project, changes["locked_labels"]
        )
    if changed:
        case.save()
        verb = "case.assigned" if set(changed) <= {"assignee", "reviewer"} else "case.updated"
        audit.record(actor, verb, project=case.project, case=case, obj=case, data=changed)
    return case


@transaction.atomic
def delete_case(actor: AnyUser, case: Case) -> None:
    if not is_manager(actor, case.project):
        raise Forbidden("Only the project's managers may delete cases.", code="not_manager")
    files: list[str] = []
    volume = getattr(case, "volume", None)
    if volume is not None:
        files.append(volume.file.name)
        files.extend(volume.source_meta.get("source_files", []))
    files.extend(case.revisions.values_list("file", flat=True))
    audit.record(
        actor, "case.deleted", project=case.project, obj=case, data={"name": case.name, "id": case.pk}
    )
    case.delete()
    transaction.on_commit(lambda: storage.delete_files(files))


def project_users(project: Project) -> QuerySet[Any]:
    return get_user_model().objects.filter(memberships__project=project)


# --- voxel access -----------------------------------------------------------------------------------------

# Decoding a CT takes ~0.5 s and slice thumbnails (and propagation jobs) of one case come in bursts, so the
# most recently used arrays stay in memory, up to PROPLABEL_VOXEL_CACHE_BYTES per process.
_array_cache: OrderedDict[str, np.ndarray] = OrderedDict()
_array_cache_lock = threading.Lock()


def read_volume_array(volume: Volume) -> np.ndarray:
    """The case's voxels ``(Z, Y, X)`` in their stored dtype (read-only, shared by callers)."""
    key = volume.content_hash
    with _array_cache_lock:
        if key in _array_cache:
            _array_cache.move_to_end(key)
            return _array_cache[key]
    array = decode_array(storage.read_bytes(volume.file.name), volume.shape_zyx, volume.dtype)
    array.setflags(write=False)
    budget = int(settings.PROPLABEL_VOXEL_CACHE_BYTES)
    if array.nbytes <= budget:
        with _array_cache_lock:
            _array_cache[key] = array
            while sum(cached.nbytes for cached in _array_cache.values()) > budget:
                _array_cache.popitem(last=False)
    return array
