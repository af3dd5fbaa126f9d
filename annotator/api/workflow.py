"""REST views of the review workflow, assignment, dashboard, audit log and exports (thin: services decide).

Included from ``annotator/api/urls.py`` under ``/api/``; see ``urlpatterns`` at the end for the table.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from django.http import FileResponse, HttpResponseBase, StreamingHttpResponse
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from annotator.api.serializers import CaseSerializer, UserBriefSerializer
from annotator.models import AuditEvent, Comment, ExportFormat, ExportJob
from annotator.services import access, dashboard, exports, workflow

AUDIT_PAGE_MAX = 500

# --- serializers (shapes of this module only) -------------------------------------------------------------


class TransitionSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=list(workflow.ACTIONS))
    comment = serializers.CharField(required=False, allow_blank=True, trim_whitespace=True)
    slice_z = serializers.IntegerField(required=False, allow_null=True, min_value=0)


class WorkflowStateSerializer(serializers.Serializer):
    status = serializers.CharField()
    allowed_actions = serializers.ListField(child=serializers.CharField())
    may_edit_labels = serializers.BooleanField()
    relations = serializers.ListField(child=serializers.CharField())


class CaseWorkflowSerializer(CaseSerializer):
    workflow = serializers.SerializerMethodField()

    class Meta(CaseSerializer.Meta):
        fields = [*CaseSerializer.Meta.fields, "workflow"]

    def get_workflow(self, case: Any) -> dict[str, Any]:
        return _workflow_state(self.context["request"].user, case)


class CommentSerializer(serializers.ModelSerializer):
    author = UserBriefSerializer(read_only=True)

    class Meta:
        model = Comment
        fields = ["id", "case", "author", "parent", "text", "slice_z", "created_at"]


class CommentCreateSerializer(serializers.Serializer):
    text = serializers.CharField(max_length=workflow.COMMENT_MAX_LENGTH)
    parent = serializers.IntegerField(required=False, allow_null=True)
    slice_z = serializers.IntegerField(required=False, allow_null=True, min_value=0)


class BulkAssignSerializer(serializers.Serializer):
    case_ids = serializers.ListField(child=serializers.IntegerField(), allow_empty=False, max_length=10000)
    assignee = serializers.IntegerField(required=False, allow_null=True)
    reviewer = serializers.IntegerField(required=False, allow_null=True)


class RoundRobinSerializer(serializers.Serializer):
    case_ids = serializers.ListField(child=serializers.IntegerField(), allow_empty=False, max_length=10000)
    annotators = serializers.ListField(child=serializers.IntegerField(), required=False, default=list)
    reviewers = serializers.ListField(child=serializers.IntegerField(), required=False, default=list)


class AssignmentResultSerializer(serializers.Serializer):
    changed = serializers.IntegerField()
    cases = CaseSerializer(many=True)


class AuditEventSerializer(serializers.ModelSerializer):
    actor = UserBriefSerializer(read_only=True)
    case_name = serializers.SerializerMethodField()

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "verb",
            "case",
            "case_name",
            "object_type",
            "object_id",
            "data",
        ]

    def get_case_name(self, event: AuditEvent) -> str:
        return event.case.name if event.case else ""


class AuditPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    results = AuditEventSerializer(many=True)


class ExportJobSerializer(serializers.ModelSerializer):
    created_by = UserBriefSerializer(read_only=True)
    download_url = serializers.SerializerMethodField()
    skipped = serializers.SerializerMethodField()

    class Meta:
        model = ExportJob
        fields = [
            "id",
            "project",
            "format",
            "options",
            "status",
            "progress",
            "error",
            "case_count",
            "size_bytes",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "download_url",
            "skipped",
        ]

    def get_skipped(self, job: ExportJob) -> list[dict[str, Any]]:
        """Cases the export left out, with the reason (e.g. a DICOM series that cannot carry a SEG)."""
        rows = job.options.get("result") or []
        return [
            {"case_id": row["case_id"], "case_name": row["case_name"], "reason": row["note"]}
            for row in rows
            if str(row.get("note", "")).startswith("skipped")
        ]

    def get_download_url(self, job: ExportJob) -> str | None:
        return f"/api/exports/{job.pk}/download/" if job.status == "succeeded" and job.file else None


class ExportCreateSerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=ExportFormat.choices)
    statuses = serializers.ListField(child=serializers.CharField(), required=False)
    case_ids = serializers.ListField(child=serializers.IntegerField(), required=False)
    dataset_id = serializers.IntegerField(required=False, min_value=1, max_value=999)
    dataset_name = serializers.CharField(required=False, max_length=100)
    channel_name = serializers.CharField(required=False, max_length=32)


def _validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _workflow_state(user: Any, case: Any) -> dict[str, Any]:
    return {
        "status": case.status,
        "allowed_actions": workflow.allowed_actions(user, case),
        "may_edit_labels": workflow.may_edit_labels(user, case),
        "relations": sorted(workflow.relations_to(user, case)),
    }


# --- transitions and comments -----------------------------------------------------------------------------


class TransitionView(GenericAPIView):
    """GET: what the user may do with the case now. POST: do it (403 role, 409 state, 400 no comment)."""

    serializer_class = TransitionSerializer

    @extend_schema(responses={200: WorkflowStateSerializer})
    def get(self, request: Request, case_id: int) -> Response:
        case = access.get_visible_case(request.user, case_id)
        return Response(_workflow_state(request.user, case))

    @extend_schema(request=TransitionSerializer, responses={200: CaseWorkflowSerializer})
    def post(self, request: Request, case_id: int) -> Response:
        case = access.get_visible_case(request.user, case_id)
        data = _validated(TransitionSerializer, request.data)
        workflow.transition(
            request.user, case, data["action"], comment=data.get("comment"), slice_z=data.get("slice_z")
        )
        fresh = access.get_visible_case(request.user, case.pk)
        return Response(CaseWorkflowSerializer(fresh, context={"request": request}).data)


class CommentListView(GenericAPIView):
    """The case's comments oldest first; ``parent`` links a reply to the comment it answers."""

    serializer_class = CommentSerializer

    def get(self, request: Request, case_id: int) -> Response:
        case = access.get_visible_case(request.user, case_id)
        return Response(CommentSerializer(workflow.comments_of(case), many=True).data)

    @extend_schema(request=CommentCreateSerializer, responses={201: CommentSerializer})
    def post(self, request: Request, case_id: int) -> Response:
        case = access.get_visible_case(request.user, case_id)
        data = _validated(CommentCreateSerializer, request.data)
        comment = workflow.add_comment(
            request.user, case, data["text"], parent_id=data.get("parent"), slice_z=data.get("slice_z")
        )
        return Response(CommentSerializer(comment).data, status=status.HTTP_201_CREATED)


# --- assignment -------------------------------------------------------------------------------------------


def _assignment_response(changed: list[Any]) -> Response:
    return Response({"changed": len(changed), "cases": CaseSerializer(changed, many=True).data})


class BulkAssignView(GenericAPIView):
    """Give all selected cases one annotator and/or reviewer (``null`` unassigns; omitted: unchanged)."""

    serializer_class = BulkAssignSerializer

    @extend_schema(request=BulkAssignSerializer, responses={200: AssignmentResultSerializer})
    def post(self, request: Request, project_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        data = _validated(BulkAssignSerializer, request.data)
        given: dict[str, Any] = {}
        for key in ("assignee", "reviewer"):
            if key in data:
                given[key] = data[key]
        changed = workflow.bulk_assign(request.user, project, data["case_ids"], **given)
        return _assignment_response(changed)


class RoundRobinAssignView(GenericAPIView):
    """Spread the selected cases over the chosen annotators and/or reviewers, least loaded first."""

    serializer_class = RoundRobinSerializer

    @extend_schema(request=RoundRobinSerializer, responses={200: AssignmentResultSerializer})
    def post(self, request: Request, project_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        data = _validated(RoundRobinSerializer, request.data)
        changed = workflow.round_robin_assign(
            request.user,
            project,
            data["case_ids"],
            annotator_ids=data["annotators"],
            reviewer_ids=data["reviewers"],
        )
        return _assignment_response(changed)


# --- dashboard and audit ----------------------------------------------------------------------------------


class DashboardView(GenericAPIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, project_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        return Response(dashboard.project_progress(project))


AUDIT_FILTERS = [
    OpenApiParameter("verb", str, description="prefix, e.g. 'case.' or 'case.approved'"),
    OpenApiParameter("actor", str, description="user id or username"),
    OpenApiParameter("case", int),
    OpenApiParameter("since", str, description="YYYY-MM-DD or ISO date-time (inclusive)"),
    OpenApiParameter("until", str, description="YYYY-MM-DD or ISO date-time (inclusive)"),
]


class AuditListView(GenericAPIView):
    serializer_class = AuditEventSerializer

    @extend_schema(
        parameters=[*AUDIT_FILTERS, OpenApiParameter("limit", int), OpenApiParameter("offset", int)],
        responses={200: AuditPageSerializer},
    )
    def get(self, request: Request, project_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        events = dashboard.audit_events(project, request.query_params)
        try:
            limit = min(max(int(request.query_params.get("limit", 100)), 1), AUDIT_PAGE_MAX)
            offset = max(int(request.query_params.get("offset", 0)), 0)
        except ValueError:
            limit, offset = 100, 0
        page = events[offset : offset + limit]
        return Response({"count": events.count(), "results": AuditEventSerializer(page, many=True).data})


class _Echo:
    """A write-only file for csv.writer that hands each formatted line back to the caller."""

    def write(self, value: str) -> str:
        return value


class AuditCsvView(GenericAPIView):
    @extend_schema(parameters=AUDIT_FILTERS, responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR)})
    def get(self, request: Request, project_id: int) -> HttpResponseBase:
        project = access.get_managed_project(request.user, project_id)
        events = dashboard.audit_events(project, request.query_params)
        writer = csv.writer(_Echo())

        def lines() -> Iterator[str]:
            for row in dashboard.audit_csv_rows(events):
                yield writer.writerow(row)

        response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="audit_project_{project.pk}.csv"'
        response["Cache-Control"] = "private, no-store"
        return response


# --- exports ----------------------------------------------------------------------------------------------


class ExportListView(GenericAPIView):
    serializer_class = ExportJobSerializer

    def get(self, request: Request, project_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        exports.sweep_stale_exports()  # a dead worker's export must not show as running in the list
        jobs = ExportJob.objects.filter(project=project).select_related("created_by")[:100]
        return Response(ExportJobSerializer(jobs, many=True).data)

    @extend_schema(request=ExportCreateSerializer, responses={202: ExportJobSerializer})
    def post(self, request: Request, project_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        data = _validated(ExportCreateSerializer, request.data)
        job = exports.create_export_job(
            request.user,
            project,
            data["format"],
            statuses=data.get("statuses"),
            case_ids=data.get("case_ids"),
            dataset_id=data.get("dataset_id"),
            dataset_name=data.get("dataset_name"),
            channel_name=data.get("channel_name"),
        )
        job.refresh_from_db()
        return Response(ExportJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class ExportDetailView(GenericAPIView):
    serializer_class = ExportJobSerializer

    def get(self, request: Request, export_id: int) -> Response:
        return Response(ExportJobSerializer(exports.get_export_job(request.user, export_id)).data)

    def delete(self, request: Request, export_id: int) -> Response:
        exports.delete_export_job(request.user, exports.get_export_job(request.user, export_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ExportDownloadView(GenericAPIView):
    @extend_schema(responses={(200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY)})
    def get(self, request: Request, export_id: int) -> HttpResponseBase:
        job = exports.get_export_job(request.user, export_id)
        # FileResponse streams the ZIP from disk in blocks.
        return FileResponse(
            exports.download_path(job).open("rb"),
            as_attachment=True,
            filename=exports.download_name(job),
            content_type="application/zip",
        )


urlpatterns = [
    path("cases/<int:case_id>/transitions/", TransitionView.as_view(), name="api-transitions"),
    path("cases/<int:case_id>/comments/", CommentListView.as_view(), name="api-comments"),
    path("projects/<int:project_id>/assignments/", BulkAssignView.as_view(), name="api-bulk-assign"),
    path(
        "projects/<int:project_id>/assignments/round-robin/",
        RoundRobinAssignView.as_view(),
        name="api-round-robin-assign",
    ),
    path("projects/<int:project_id>/dashboard/", DashboardView.as_view(), name="api-dashboard"),
    path("projects/<int:project_id>/audit/", AuditListView.as_view(), name="api-audit"),
    path("projects/<int:project_id>/audit.csv", AuditCsvView.as_view(), name="api-audit-csv"),
    path("projects/<int:project_id>/exports/", ExportListView.as_view(), name="api-exports"),
    path("exports/<int:export_id>/", ExportDetailView.as_view(), name="api-export"),
    path("exports/<int:export_id>/download/", ExportDownloadView.as_view(), name="api-export-download"),
]
