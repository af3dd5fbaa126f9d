"""Segmentation revisions: immutable label volumes of a case. Undo/redo only moves ``Case.current_revision``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from annotator.imaging import decode_array, encode_array, write_label_nifti
from annotator.models import Case, PropagationJob, RevisionSource, SegmentationRevision, Volume
from annotator.services import audit, storage
from annotator.services.access import AnyUser
from annotator.services.errors import InvalidInput, NotFound


def label_statistics(
    label: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[dict[str, int], dict[str, float]]:
    """Voxel count and volume in mL of every non-zero label value present (JSON keys are strings)."""
    counts = np.bincount(label.ravel(), minlength=256)
    voxel_ml = float(spacing[0]) * float(spacing[1]) * float(spacing[2]) / 1000.0
    present = [value for value in range(1, counts.size) if counts[value] > 0]
    voxel_counts = {str(value): int(counts[value]) for value in present}
    volumes_ml = {str(value): round(int(counts[value]) * voxel_ml, 4) for value in present}
    return voxel_counts, volumes_ml


def _as_label_volume(label: np.ndarray, volume: Volume) -> np.ndarray:
    if tuple(label.shape) != volume.shape_zyx:
        raise InvalidInput(
            f"The label volume has shape {list(label.shape)}, the image {list(volume.shape_zyx)}.",
            code="label_shape_mismatch",
        )
    if label.dtype == np.uint8:
        return np.ascontiguousarray(label)
    if label.dtype == np.bool_ or (
        np.issubdtype(label.dtype, np.integer)
        and (label.size == 0 or (label.min() >= 0 and label.max() <= 255))
    ):
        return np.ascontiguousarray(label, dtype=np.uint8)
    raise InvalidInput("Label values must be integers from 0 to 255.", code="label_values_out_of_range")


def create_revision(
    case: Case,
    label: np.ndarray,
    *,
    author: AnyUser | None,
    source: str,
    parent: SegmentationRevision | None = None,
    changed_label: int | None = None,
    job: PropagationJob | None = None,
    message: str = "",
    make_current: bool = True,
) -> SegmentationRevision:
    """Store ``label`` (uint8 ``(Z, Y, X)``) as the case's next revision and, by default, make it current.

    ``parent`` defaults to the case's current revision. The label file is written before the row; if the
    row cannot be written the file is removed again, so a failure leaves nothing behind. Callers that wrap
    this in a larger transaction must delete ``revision.file.name`` themselves if that transaction fails.
    """
    if source not in RevisionSource.values:
        raise InvalidInput(f"Unknown revision source {source!r}.", code="invalid_source")
    volume = case.volume
    label = _as_label_volume(label, volume)
    data = encode_array(label)
    counts, volumes_ml = label_statistics(label, volume.spacing_zyx)
    name = storage.save_bytes(storage.LABELS_DIR, data, ".raw.gz")
    try:
        with transaction.atomic():
            # Locking the case row serialises revision numbers and current_revision moves per case.
            locked = Case.objects.select_for_update().get(pk=case.pk)
            if parent is None:
                parent = locked.current_revision
            last_number = locked.revisions.aggregate(last=Max("number"))["last"] or 0
            revision = SegmentationRevision.objects.create(
                case=locked,
                number=last_number + 1,
                parent=parent,
                author=author if author is not None and author.is_authenticated else None,
                file=name,
                content_hash=storage.content_hash(data),
                label_counts=counts,
                label_volumes_ml=volumes_ml,
                source=source,
                changed_label=changed_label,
                job=job,
                message=message[:255],
            )
            if make_current:
                Case.objects.filter(pk=locked.pk).update(current_revision=revision, updated_at=timezone.now())
            audit.record(
                author,
                "revision.created",
                project=case.project,
                case=locked,
                obj=revision,
                data={"number": revision.number, "source": source, "label_counts": counts},
            )
    except BaseException:
        storage.delete_files([name])
        raise
    if make_current:
        case.current_revision = revision
    return revision


def get_revision(case: Case, revision_id: int) -> SegmentationRevision:
    revision = (
        SegmentationRevision.objects.select_related("author", "case")
        .filter(case=case, pk=revision_id)
        .first()
    )
    if revision is None:
        raise NotFound("Revision not found.", code="not_found")
    return revision


def read_label_volume(revision: SegmentationRevision) -> np.ndarray:
    """The revision's labels as a writable uint8 ``(Z, Y, X)`` array."""
    volume = revision.case.volume
    return decode_array(storage.read_bytes(revision.file.name), volume.shape_zyx, "uint8")


def current_label_volume(case: Case) -> np.ndarray:
    """The current labels of the case, or all background when it has no revision yet."""
    if case.current_revision_id is None:
        return np.zeros(case.volume.shape_zyx, dtype=np.uint8)
    revision = SegmentationRevision.objects.select_related("case__volume").get(pk=case.current_revision_id)
    return read_label_volume(revision)


def write_revision_nifti(revision: SegmentationRevision, directory: Path) -> Path:
    """Write the revision as a NIfTI label map on the source image's grid; returns the file path."""
    volume = revision.case.volume
    path = directory / f"{revision.case.name or 'case'}_rev{revision.number}.nii.gz"
    write_label_nifti(
        read_label_volume(revision), np.asarray(volume.affine, dtype=np.float64), volume.source_meta, path
    )
    return path


def revision_nifti_tempdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="proplabel-nifti-")
