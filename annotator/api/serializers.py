"""Output shapes of the REST API, and input serializers that check types before services check meaning."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from annotator.models import (
    Case,
    CaseStatus,
    ImportJob,
    LabelClass,
    Membership,
    Project,
    Role,
    SegmentationRevision,
    Volume,
)


class UserBriefSerializer(serializers.ModelSerializer):
    name = serializers.SerializerMethodField()

    class Meta:
        model = get_user_model()
        fields = ["id", "username", "name"]

    def get_name(self, user: Any) -> str:
        return user.get_full_name() or user.get_username()


class ProjectRoleSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    role = serializers.ChoiceField(choices=Role.choices)


class MeSerializer(UserBriefSerializer):
    projects = serializers.SerializerMethodField()
    can_create_projects = serializers.SerializerMethodField()

    class Meta(UserBriefSerializer.Meta):
        fields = [*UserBriefSerializer.Meta.fields, "is_staff", "can_create_projects", "projects"]

    @extend_schema_field(ProjectRoleSerializer(many=True))
    def get_projects(self, user: Any) -> list[dict[str, Any]]:
        memberships = Membership.objects.filter(user=user).select_related("project").order_by("project__name")
        return [{"id": m.project_id, "name": m.project.name, "role": m.role} for m in memberships]

    def get_can_create_projects(self, user: Any) -> bool:
        from annotator.services.access import can_create_projects

        return can_create_projects(user)


class ProjectSerializer(serializers.ModelSerializer):
    # Filled by the view with an annotation: the requesting user's role in the project.
    role = serializers.CharField(read_only=True, default=None)
    case_count = serializers.IntegerField(read_only=True, default=None)

    class Meta:
        model = Project
        fields = ["id", "name", "description", "role", "case_count", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


class ProjectWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True)


class ProjectPatchSerializer(ProjectWriteSerializer):
    name = serializers.CharField(max_length=200, required=False)


class MembershipSerializer(serializers.ModelSerializer):
    user = UserBriefSerializer(read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user", "role", "created_at"]


class MembershipCreateSerializer(serializers.Serializer):
    user_id = serializers.IntegerField(required=False)
    username = serializers.CharField(required=False)
    role = serializers.ChoiceField(choices=Role.choices)


class MembershipPatchSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class LabelClassSerializer(serializers.ModelSerializer):
    class Meta:
        model = LabelClass
        fields = ["id", "name", "value", "color"]


class LabelClassWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    value = serializers.IntegerField(required=False, min_value=1, max_value=255)
    color = serializers.CharField(required=False, max_length=7)


class LabelClassPatchSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    color = serializers.CharField(required=False, max_length=7)
    value = serializers.IntegerField(required=False)


class CaseBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Case
        fields = ["id", "name"]


class FileErrorSerializer(serializers.Serializer):
    name = serializers.CharField()
    message = serializers.CharField()
    code = serializers.CharField()


class ImportJobSerializer(serializers.ModelSerializer):
    cases = CaseBriefSerializer(many=True, read_only=True)
    created_by = UserBriefSerializer(read_only=True)
    file_errors = FileErrorSerializer(many=True, read_only=True)

    class Meta:
        model = ImportJob
        fields = [
            "id",
            "project",
            "status",
            "progress",
            "error",
            "error_code",
            "file_errors",
            "warnings",
            "upload_names",
            "label_file_name",
            "upload_bytes",
            "cases",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
        ]


@extend_schema_field(OpenApiTypes.OBJECT)
class JSONObjectField(serializers.Field):
    """A JSON object sent as a form field (multipart) or as a JSON value."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, str):
            try:
                data = json.loads(data) if data.strip() else {}
            except json.JSONDecodeError as exc:
                raise serializers.ValidationError("Not valid JSON.") from exc
        if not isinstance(data, dict):
            raise serializers.ValidationError("Expected a JSON object.")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class ImportCreateSerializer(serializers.Serializer):
    files = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True), allow_empty=True, required=False
    )
    label_file = serializers.FileField(required=False, allow_empty_file=True)
    label_value_map = JSONObjectField(required=False)
    drop_unmapped_labels = serializers.BooleanField(required=False, default=False)


class VolumeSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = Volume
        fields = ["shape", "spacing", "dtype", "modality"]


class CaseSerializer(serializers.ModelSerializer):
    assignee = UserBriefSerializer(read_only=True)
    reviewer = UserBriefSerializer(read_only=True)
    volume = VolumeSummarySerializer(read_only=True)
    status = serializers.ChoiceField(choices=CaseStatus.choices, read_only=True)

    class Meta:
        model = Case
        fields = [
            "id",
            "project",
            "name",
            "status",
            "assignee",
            "reviewer",
            "current_revision",
            "locked_labels",
            "volume",
            "imported_from",
            "created_at",
            "updated_at",
            "status_changed_at",
        ]


class CasePatchSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=255, required=False)
    assignee = serializers.IntegerField(required=False, allow_null=True)
    reviewer = serializers.IntegerField(required=False, allow_null=True)
    locked_labels = serializers.ListField(child=serializers.IntegerField(), required=False)


class IntensityStatsSerializer(serializers.Serializer):
    min = serializers.FloatField()
    max = serializers.FloatField()
    mean = serializers.FloatField()
    std = serializers.FloatField()
    p0_5 = serializers.FloatField()
    p99_5 = serializers.FloatField()


class VolumeSerializer(serializers.ModelSerializer):
    stats = IntensityStatsSerializer(read_only=True)
    voxels_url = serializers.SerializerMethodField()

    class Meta:
        model = Volume
        fields = [
            "shape",
            "spacing",
            "dtype",
            "affine",
            "modality",
            "stats",
            "source_format",
            "warnings",
            "content_hash",
            "size_bytes",
            "voxels_url",
        ]

    def get_voxels_url(self, volume: Volume) -> str:
        return f"/api/cases/{volume.case_id}/volume/voxels/"


class RevisionSerializer(serializers.ModelSerializer):
    author = UserBriefSerializer(read_only=True)
    is_current = serializers.SerializerMethodField()
    labels_url = serializers.SerializerMethodField()
    nifti_url = serializers.SerializerMethodField()

    class Meta:
        model = SegmentationRevision
        fields = [
            "id",
            "case",
            "number",
            "parent",
            "author",
            "created_at",
            "source",
            "changed_label",
            "job",
            "message",
            "label_counts",
            "label_volumes_ml",
            "content_hash",
            "is_current",
            "labels_url",
            "nifti_url",
        ]

    def get_is_current(self, revision: SegmentationRevision) -> bool:
        current = self.context.get("current_revision_id")
        return current is not None and current == revision.pk

    def get_labels_url(self, revision: SegmentationRevision) -> str:
        return f"/api/cases/{revision.case_id}/revisions/{revision.pk}/labels/"

    def get_nifti_url(self, revision: SegmentationRevision) -> str:
        return f"/api/cases/{revision.case_id}/revisions/{revision.pk}/nifti/"
