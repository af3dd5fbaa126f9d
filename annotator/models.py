"""PropLabel data model.

Rows are changed only through ``annotator.services`` (which validate, write, audit and notify); views, tasks
and consumers never ``.save()`` these models directly. Voxels and label volumes live in media storage
(``volumes/<uuid>.raw.gz``, ``labels/<uuid>.raw.gz``, docs/ARCHITECTURE.md), never in the database.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q


class Role(models.TextChoices):
    MANAGER = "manager", "Manager"
    ANNOTATOR = "annotator", "Annotator"
    REVIEWER = "reviewer", "Reviewer"


class Project(models.Model):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project_id", "user_id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="membership_unique_user_per_project"),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}@{self.project_id}:{self.role}"


hex_color_validator = RegexValidator(r"^#[0-9a-fA-F]{6}$", "Colour must be #rrggbb.")


class LabelClass(models.Model):
    """A structure to segment; ``value`` is the voxel value in every label volume of the project."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="label_classes")
    name = models.CharField(max_length=100)
    value = models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(255)])
    color = models.CharField(max_length=7, validators=[hex_color_validator])

    class Meta:
        ordering = ["project_id", "value"]
        constraints = [
            models.UniqueConstraint(fields=["project", "value"], name="labelclass_unique_value_per_project"),
            models.UniqueConstraint(fields=["project", "name"], name="labelclass_unique_name_per_project"),
            models.CheckConstraint(condition=Q(value__gte=1, value__lte=255), name="labelclass_value_1_255"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.value})"


class CaseStatus(models.TextChoices):
    NEW = "new", "New"
    IN_PROGRESS = "in_progress", "In progress"
    SUBMITTED = "submitted", "Submitted"
    IN_REVIEW = "in_review", "In review"
    CHANGES_REQUESTED = "changes_requested", "Changes requested"
    APPROVED = "approved", "Approved"


class ImportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    # Some files became cases, others were refused (listed in file_errors).
    PARTIAL = "partial", "Partially succeeded"


class WorkerJob(models.Model):
    """Bookkeeping shared by jobs a Celery worker claims and runs (imports, exports)."""

    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Refreshed by the worker while running; a stale one means the worker died (see services.heartbeats).
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class ImportJob(WorkerJob):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="import_jobs")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="import_jobs"
    )
    status = models.CharField(max_length=16, choices=ImportStatus.choices, default=ImportStatus.QUEUED)
    progress = models.FloatField(default=0.0)
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    # [{"name": ..., "message": ..., "code": ...}] for files/series that were refused.
    file_errors = models.JSONField(default=list, blank=True)
    warnings = models.JSONField(default=list, blank=True)
    # Storage-relative folder holding the uploaded files until the import has run (then removed).
    upload_dir = models.CharField(max_length=255, blank=True)
    upload_names = models.JSONField(default=list, blank=True)
    label_file_name = models.CharField(max_length=255, blank=True)
    upload_bytes = models.BigIntegerField(default=0)
    # e.g. {"label_value_map": {"5": 1, "52": 2}} to translate label ids of another tool.
    options = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["project", "-created_at"], name="importjob_project_recent")]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress__gte=0, progress__lte=1), name="importjob_progress_0_1"
            )
        ]

    def __str__(self) -> str:
        return f"import {self.pk} ({self.status})"


class Case(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="cases")
    name = models.CharField(max_length=255)
    status = models.CharField(max_length=24, choices=CaseStatus.choices, default=CaseStatus.NEW)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="assigned_cases",
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="review_cases",
    )
    current_revision = models.ForeignKey(
        "SegmentationRevision", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Label values that propagation/refinement must never overwrite.
    locked_labels = models.JSONField(default=list, blank=True)
    imported_from = models.ForeignKey(
        ImportJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="cases"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    status_changed_at = models.DateTimeField(auto_now_add=True)
    # Workflow milestones, kept on the row so dashboards need no audit-log scans.
    started_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    changes_requested_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["project_id", "name", "id"]
        indexes = [
            models.Index(fields=["project", "status"], name="case_project_status"),
            models.Index(fields=["assignee", "status"], name="case_assignee_status"),
            models.Index(fields=["reviewer", "status"], name="case_reviewer_status"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=CaseStatus.values), name="case_status_valid"),
        ]

    def __str__(self) -> str:
        return self.name


class Volume(models.Model):
    """The image of a case: canonical ``(Z, Y, X)`` voxels plus the geometry needed to export on its grid."""

    case = models.OneToOneField(Case, on_delete=models.CASCADE, related_name="volume")
    file = models.FileField(max_length=255)
    shape = models.JSONField()  # [Z, Y, X]
    spacing = models.JSONField()  # [sz, sy, sx] mm
    affine = models.JSONField()  # 4x4, (z, y, x, 1) -> RAS+ mm
    dtype = models.CharField(max_length=16)
    modality = models.CharField(max_length=16, blank=True)
    stats = models.JSONField(default=dict)  # {min, max, mean, std, p0_5, p99_5}
    source_format = models.CharField(max_length=16)
    # DICOM: UIDs, sop_instance_uids per z, source_files (storage-relative names of the kept DICOM files).
    source_meta = models.JSONField(default=dict, blank=True)
    warnings = models.JSONField(default=list, blank=True)
    # sha256 of the stored gzip bytes: the ETag of the voxels download.
    content_hash = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"volume of case {self.case_id}"

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        z, y, x = (int(v) for v in self.shape)
        return (z, y, x)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        sz, sy, sx = (float(v) for v in self.spacing)
        return (sz, sy, sx)


class RevisionSource(models.TextChoices):
    IMPORT = "import", "Imported label file"
    PROPAGATION = "propagation", "Propagation"
    REFINEMENT = "refinement", "Refinement"
    MANUAL = "manual", "Manual edit"
    REVERT = "revert", "Revert to an earlier revision"


class ImmutableRowError(Exception):
    pass


class SegmentationRevision(models.Model):
    """One immutable state of a case's label volume. Undo moves ``Case.current_revision``; nothing is edited."""

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="revisions")
    # 1, 2, 3... per case, allocated while the case row is locked.
    number = models.PositiveIntegerField()
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="revisions"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    file = models.FileField(max_length=255)
    content_hash = models.CharField(max_length=64)
    label_counts = models.JSONField(default=dict)  # {"<value>": voxels}
    label_volumes_ml = models.JSONField(default=dict)  # {"<value>": mL}
    source = models.CharField(max_length=16, choices=RevisionSource.choices)
    # The label value this revision changed (None when several or all changed, e.g. an import).
    changed_label = models.PositiveSmallIntegerField(null=True, blank=True)
    job = models.ForeignKey(
        "PropagationJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="revisions"
    )
    message = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["case_id", "number"]
        constraints = [
            models.UniqueConstraint(fields=["case", "number"], name="revision_unique_number_per_case"),
        ]

    def __str__(self) -> str:
        return f"case {self.case_id} rev {self.number}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ImmutableRowError("Segmentation revisions are immutable; create a new revision instead.")
        super().save(*args, **kwargs)


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    SUPERSEDED = "superseded", "Superseded by a newer prompt"


ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class PropagationKind(models.TextChoices):
    PROPAGATE = "propagate", "Propagate from a prompt"
    REFINE = "refine", "Refine with corrections"


class PropagationJob(models.Model):
    """The single source of truth for one propagation/refinement run (the Celery message carries only the id)."""

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="propagation_jobs")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="propagation_jobs"
    )
    label_value = models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(255)])
    kind = models.CharField(max_length=16, choices=PropagationKind.choices, default=PropagationKind.PROPAGATE)
    prompt = models.JSONField(default=dict, blank=True)
    # Engine options: boundaries (z_min/z_max), clicks, edited slices, engine name...
    options = models.JSONField(default=dict, blank=True)
    base_revision = models.ForeignKey(
        SegmentationRevision, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    superseded_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="supersedes"
    )
    progress = models.FloatField(default=0.0)
    slices_done = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    result_revision = models.ForeignKey(
        SegmentationRevision, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    worker = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    first_slice_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["case", "status"], name="propjob_case_status"),
            models.Index(fields=["status", "created_at"], name="propjob_status_created"),
            models.Index(fields=["user", "status", "created_at"], name="propjob_user_status_created"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress__gte=0, progress__lte=1), name="propjob_progress_0_1"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} job {self.pk} ({self.status})"


class Comment(models.Model):
    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="case_comments"
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="replies"
    )
    text = models.TextField()
    slice_z = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["case_id", "created_at", "id"]
        indexes = [models.Index(fields=["case", "created_at"], name="comment_case_created")]

    def __str__(self) -> str:
        return f"comment {self.pk} on case {self.case_id}"


class ExportFormat(models.TextChoices):
    NNUNET = "nnunet", "nnU-Net v2 raw data set"
    NIFTI = "nifti", "NIfTI label maps"
    DICOM_SEG = "dicom_seg", "DICOM SEG"


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class ExportJob(WorkerJob):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="export_jobs")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="export_jobs"
    )
    format = models.CharField(max_length=16, choices=ExportFormat.choices)
    # e.g. {"statuses": ["approved"], "case_ids": [...], "dataset_id": 501}
    options = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=ExportStatus.choices, default=ExportStatus.QUEUED)
    progress = models.FloatField(default=0.0)
    error = models.TextField(blank=True)
    file = models.FileField(max_length=255, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    case_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["project", "-created_at"], name="exportjob_project_recent")]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress__gte=0, progress__lte=1), name="exportjob_progress_0_1"
            )
        ]

    def __str__(self) -> str:
        return f"export {self.pk} ({self.format}, {self.status})"


class AuditEvent(models.Model):
    """Who did what, when, on which object. Written by services for every change."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audit_events",
    )
    # Dotted verbs: "project.created", "case.assigned", "import.succeeded", "revision.created", ...
    verb = models.CharField(max_length=64)
    # SET_NULL keeps the trail of deleted projects/cases (their ids stay in object_id/data).
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    case = models.ForeignKey(
        Case, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["project", "-created_at"], name="audit_project_recent"),
            models.Index(fields=["case", "-created_at"], name="audit_case_recent"),
            models.Index(fields=["verb"], name="audit_verb"),
            models.Index(fields=["actor", "-created_at"], name="audit_actor_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.verb} by {self.actor_id} at {self.created_at:%Y-%m-%d %H:%M:%S}"
