"""REST views: parse the request, look the object up through ``access`` (authorisation), call a service,
serialise the result. No business logic here."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db.models import Count, OuterRef, Subquery
from django.http import FileResponse, HttpResponse, HttpResponseBase
from django.utils.text import get_valid_filename
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from annotator.api import serializers as api
from annotator.imaging import render_slice_png
from annotator.models import Case, Membership, Project, Role, SegmentationRevision
from annotator.services import access, cases, imports, projects, revisions, storage
from annotator.services.errors import InvalidInput, NotFound, TooLarge

BINARY_RESPONSE = OpenApiResponse(
    OpenApiTypes.BINARY, description="gzip'd raw little-endian C-order (Z, Y, X)"
)


def _validated(serializer_class: type[Any], data: Any, partial: bool = False) -> dict[str, Any]:
    serializer = serializer_class(data=data, partial=partial)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _etag_matches(request: Request, etag: str) -> bool:
    header = request.headers.get("If-None-Match", "")
    candidates = {item.strip().removeprefix("W/") for item in header.split(",") if item.strip()}
    return "*" in candidates or etag in candidates


def _stored_gzip_response(
    request: Request, name: str, content_hash: str, headers: dict[str, str]
) -> HttpResponseBase:
    """Serve a stored ``.raw.gz`` file as-is with ``Content-Encoding: gzip``; the browser inflates it."""
    etag = f'"{content_hash}"'
    cache_control = f"private, max-age={settings.PROPLABEL_BINARY_MAX_AGE}"
    if _etag_matches(request, etag):
        response: HttpResponseBase = HttpResponse(status=status.HTTP_304_NOT_MODIFIED)
    else:
        response = FileResponse(storage.local_path(name).open("rb"), content_type="application/octet-stream")
        response["Content-Encoding"] = "gzip"
        # FileResponse names the download after the storage file; the uuid means nothing to a client.
        del response["Content-Disposition"]
    response["ETag"] = etag
    response["Cache-Control"] = cache_control
    for key, value in headers.items():
        response[key] = value
    return response


# --- me, projects -----------------------------------------------------------------------------------------


class MeView(GenericAPIView):
    serializer_class = api.MeSerializer

    def get(self, request: Request) -> Response:
        return Response(api.MeSerializer(request.user).data)


def _projects_with_role(user: Any) -> Any:
    role = Membership.objects.filter(project=OuterRef("pk"), user=user).values("role")[:1]
    return access.projects_visible_to(user).annotate(
        role=Subquery(role), case_count=Count("cases", distinct=True)
    )


class ProjectListView(GenericAPIView):
    serializer_class = api.ProjectSerializer

    @extend_schema(operation_id="projects_list", responses=api.ProjectSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(api.ProjectSerializer(_projects_with_role(request.user), many=True).data)

    @extend_schema(request=api.ProjectWriteSerializer, responses={201: api.ProjectSerializer})
    def post(self, request: Request) -> Response:
        data = _validated(api.ProjectWriteSerializer, request.data)
        project = projects.create_project(request.user, data["name"], data.get("description", ""))
        created = _projects_with_role(request.user).get(pk=project.pk)
        return Response(api.ProjectSerializer(created).data, status=status.HTTP_201_CREATED)


class ProjectDetailView(GenericAPIView):
    serializer_class = api.ProjectSerializer

    def _get(self, request: Request, project_id: int) -> Project:
        project = _projects_with_role(request.user).filter(pk=project_id).first()
        if project is None:
            raise NotFound("Project not found.", code="not_found")
        return project

    def get(self, request: Request, project_id: int) -> Response:
        return Response(api.ProjectSerializer(self._get(request, project_id)).data)

    @extend_schema(request=api.ProjectPatchSerializer)
    def patch(self, request: Request, project_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        projects.update_project(
            request.user, project, _validated(api.ProjectPatchSerializer, request.data, True)
        )
        return Response(api.ProjectSerializer(self._get(request, project_id)).data)

    def delete(self, request: Request, project_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        projects.delete_project(request.user, project)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- members ----------------------------------------------------------------------------------------------


class MemberListView(GenericAPIView):
    serializer_class = api.MembershipSerializer

    @extend_schema(operation_id="projects_members_list", responses=api.MembershipSerializer(many=True))
    def get(self, request: Request, project_id: int) -> Response:
        project, _ = access.get_visible_project(request.user, project_id)
        members = project.memberships.select_related("user").order_by("role", "user__username")
        return Response(api.MembershipSerializer(members, many=True).data)

    @extend_schema(request=api.MembershipCreateSerializer, responses={201: api.MembershipSerializer})
    def post(self, request: Request, project_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        data = _validated(api.MembershipCreateSerializer, request.data)
        membership = projects.add_member(
            request.user, project, data["role"], user_id=data.get("user_id"), username=data.get("username")
        )
        return Response(api.MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)


class MemberDetailView(GenericAPIView):
    serializer_class = api.MembershipSerializer

    @extend_schema(request=api.MembershipPatchSerializer)
    def patch(self, request: Request, project_id: int, member_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        membership = projects.get_membership(project, member_id)
        data = _validated(api.MembershipPatchSerializer, request.data)
        projects.change_member_role(request.user, membership, data["role"])
        return Response(api.MembershipSerializer(membership).data)

    def delete(self, request: Request, project_id: int, member_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        projects.remove_member(request.user, projects.get_membership(project, member_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- label classes ----------------------------------------------------------------------------------------


class LabelListView(GenericAPIView):
    serializer_class = api.LabelClassSerializer

    @extend_schema(operation_id="projects_labels_list", responses=api.LabelClassSerializer(many=True))
    def get(self, request: Request, project_id: int) -> Response:
        project, _ = access.get_visible_project(request.user, project_id)
        return Response(api.LabelClassSerializer(project.label_classes.all(), many=True).data)

    @extend_schema(request=api.LabelClassWriteSerializer, responses={201: api.LabelClassSerializer})
    def post(self, request: Request, project_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        data = _validated(api.LabelClassWriteSerializer, request.data)
        label = projects.create_label_class(
            request.user, project, data["name"], value=data.get("value"), color=data.get("color")
        )
        return Response(api.LabelClassSerializer(label).data, status=status.HTTP_201_CREATED)


class LabelDetailView(GenericAPIView):
    serializer_class = api.LabelClassSerializer

    @extend_schema(request=api.LabelClassPatchSerializer)
    def patch(self, request: Request, project_id: int, label_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        label = projects.get_label_class(project, label_id)
        data = _validated(api.LabelClassPatchSerializer, request.data)
        projects.update_label_class(request.user, label, data)
        return Response(api.LabelClassSerializer(label).data)

    def delete(self, request: Request, project_id: int, label_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        projects.delete_label_class(request.user, projects.get_label_class(project, label_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- imports ----------------------------------------------------------------------------------------------


class ImportListView(GenericAPIView):
    serializer_class = api.ImportJobSerializer
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    @extend_schema(operation_id="projects_imports_list", responses=api.ImportJobSerializer(many=True))
    def get(self, request: Request, project_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        imports.sweep_stale_imports()  # a dead worker's import must not show as running in the history
        jobs = project.import_jobs.select_related("created_by").prefetch_related("cases")[:200]
        return Response(api.ImportJobSerializer(jobs, many=True).data)

    @extend_schema(
        request={"multipart/form-data": api.ImportCreateSerializer}, responses={202: api.ImportJobSerializer}
    )
    def post(self, request: Request, project_id: int) -> Response:
        project = access.get_managed_project(request.user, project_id)
        # Refuse an oversized body before Django spools it to disk.
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
        limit = settings.PROPLABEL_MAX_UPLOAD_BYTES
        if declared > limit + 1024**2:
            raise TooLarge(
                f"The upload is {declared / 1e6:.1f} MB; the limit is {limit / 1e6:.1f} MB.", code="too_large"
            )
        files = request.FILES.getlist("files")
        data = _validated(
            api.ImportCreateSerializer,
            {
                "label_value_map": request.data.get("label_value_map", {}),
                "drop_unmapped_labels": request.data.get("drop_unmapped_labels", False),
            },
        )
        job = imports.create_import_job(
            request.user,
            project,
            files,
            label_file=request.FILES.get("label_file"),
            label_value_map=data.get("label_value_map"),
            drop_unmapped_labels=data.get("drop_unmapped_labels", False),
        )
        return Response(api.ImportJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class ImportDetailView(GenericAPIView):
    serializer_class = api.ImportJobSerializer

    def get(self, request: Request, import_id: int) -> Response:
        managed = Membership.objects.filter(user=request.user, role=Role.MANAGER).values("project")
        job = imports.get_import_job(managed, import_id)
        return Response(api.ImportJobSerializer(job).data)


# --- cases ------------------------------------------------------------------------------------------------


class CaseListView(GenericAPIView):
    serializer_class = api.CaseSerializer

    @extend_schema(
        operation_id="cases_list",
        responses=api.CaseSerializer(many=True),
        parameters=[
            OpenApiParameter("project", int),
            OpenApiParameter("status", str, description="one status or several, comma-separated"),
            OpenApiParameter("assignee", str, description="user id, or 'none'"),
            OpenApiParameter("reviewer", str, description="user id, or 'none'"),
        ],
    )
    def get(self, request: Request) -> Response:
        queryset = cases.cases_for_listing(access.cases_visible_to(request.user), request.query_params)
        return Response(api.CaseSerializer(queryset, many=True).data)


class CaseDetailView(GenericAPIView):
    serializer_class = api.CaseSerializer

    def get(self, request: Request, case_id: int) -> Response:
        return Response(api.CaseSerializer(access.get_visible_case(request.user, case_id)).data)

    @extend_schema(request=api.CasePatchSerializer)
    def patch(self, request: Request, case_id: int) -> Response:
        case = access.get_visible_case(request.user, case_id)
        data = _validated(api.CasePatchSerializer, request.data, partial=True)
        updated = cases.update_case(request.user, case, data)
        return Response(api.CaseSerializer(access.get_visible_case(request.user, updated.pk)).data)

    def delete(self, request: Request, case_id: int) -> Response:
        cases.delete_case(request.user, access.get_visible_case(request.user, case_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


def _case_volume(request: Request, case_id: int) -> tuple[Case, Any]:
    case = access.get_visible_case(request.user, case_id)
    volume = getattr(case, "volume", None)
    if volume is None:
        raise NotFound("This case has no volume.", code="no_volume")
    return case, volume


class VolumeView(GenericAPIView):
    serializer_class = api.VolumeSerializer

    def get(self, request: Request, case_id: int) -> Response:
        _, volume = _case_volume(request, case_id)
        return Response(api.VolumeSerializer(volume).data)


class VolumeVoxelsView(GenericAPIView):
    @extend_schema(responses={200: BINARY_RESPONSE, 304: None})
    def get(self, request: Request, case_id: int) -> HttpResponseBase:
        _, volume = _case_volume(request, case_id)
        return _stored_gzip_response(
            request,
            volume.file.name,
            volume.content_hash,
            {"X-Volume-Shape": ",".join(str(v) for v in volume.shape), "X-Volume-Dtype": volume.dtype},
        )


class SliceView(GenericAPIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("axis", str, enum=["axial", "coronal", "sagittal"]),
            OpenApiParameter("window", float),
            OpenApiParameter("level", float),
            OpenApiParameter("size", int, description="longest side in pixels (16-1024, default 512)"),
        ],
        responses={(200, "image/png"): OpenApiResponse(OpenApiTypes.BINARY)},
    )
    def get(self, request: Request, case_id: int, index: int) -> HttpResponseBase:
        _, volume = _case_volume(request, case_id)
        params = request.query_params
        axis = params.get("axis", "axial")
        if axis not in ("axial", "coronal", "sagittal"):
            raise InvalidInput("axis must be axial, coronal or sagittal.", code="invalid_axis")
        axis_length = volume.shape_zyx[{"axial": 0, "coronal": 1, "sagittal": 2}[axis]]
        if not 0 <= index < axis_length:
            raise InvalidInput(
                f"{axis} slice {index} is outside 0..{axis_length - 1}.", code="slice_out_of_range"
            )
        stats = volume.stats
        try:
            low, high = float(stats.get("p0_5", 0.0)), float(stats.get("p99_5", 1.0))
            window = float(params.get("window", max(high - low, 1e-3)))
            level = float(params.get("level", (high + low) / 2))
            size = int(params.get("size", 512))
        except ValueError as exc:
            raise InvalidInput("window, level and size must be numbers.", code="invalid_window") from exc
        if window <= 0 or not 16 <= size <= 1024:
            raise InvalidInput("window must be > 0 and size within 16..1024.", code="invalid_window")
        # "r1": radiological orientation from the affine (older cached thumbnails were in array order).
        etag = f'"{volume.content_hash[:32]}-r1-{axis}-{index}-{window:g}-{level:g}-{size}"'
        if _etag_matches(request, etag):
            response = HttpResponse(status=status.HTTP_304_NOT_MODIFIED)
        else:
            png = render_slice_png(
                cases.read_volume_array(volume),
                axis,
                index,
                window,
                level,
                spacing=volume.spacing_zyx,
                max_size=size,
                affine=np.asarray(volume.affine, dtype=np.float64),
            )
            response = HttpResponse(png, content_type="image/png")
        response["ETag"] = etag
        response["Cache-Control"] = f"private, max-age={settings.PROPLABEL_BINARY_MAX_AGE}"
        return response


# --- revisions --------------------------------------------------------------------------------------------


class RevisionListView(GenericAPIView):
    serializer_class = api.RevisionSerializer

    @extend_schema(operation_id="cases_revisions_list", responses=api.RevisionSerializer(many=True))
    def get(self, request: Request, case_id: int) -> Response:
        case = access.get_visible_case(request.user, case_id)
        queryset = SegmentationRevision.objects.filter(case=case).select_related("author").order_by("number")
        context = {"current_revision_id": case.current_revision_id}
        return Response(api.RevisionSerializer(queryset, many=True, context=context).data)


class RevisionDetailView(GenericAPIView):
    serializer_class = api.RevisionSerializer

    def get(self, request: Request, case_id: int, revision_id: int) -> Response:
        case = access.get_visible_case(request.user, case_id)
        revision = revisions.get_revision(case, revision_id)
        context = {"current_revision_id": case.current_revision_id}
        return Response(api.RevisionSerializer(revision, context=context).data)


class RevisionLabelsView(GenericAPIView):
    @extend_schema(responses={200: BINARY_RESPONSE, 304: None})
    def get(self, request: Request, case_id: int, revision_id: int) -> HttpResponseBase:
        case = access.get_visible_case(request.user, case_id)
        revision = revisions.get_revision(case, revision_id)
        return _stored_gzip_response(
            request,
            revision.file.name,
            revision.content_hash,
            {"X-Volume-Shape": ",".join(str(v) for v in case.volume.shape), "X-Volume-Dtype": "uint8"},
        )


class RevisionNiftiView(GenericAPIView):
    @extend_schema(responses={(200, "application/gzip"): OpenApiResponse(OpenApiTypes.BINARY)})
    def get(self, request: Request, case_id: int, revision_id: int) -> HttpResponseBase:
        case = access.get_visible_case(request.user, case_id)
        revision = revisions.get_revision(case, revision_id)
        directory = Path(tempfile.mkdtemp(prefix="proplabel-nifti-"))
        try:
            path = revisions.write_revision_nifti(revision, directory)
            data = path.read_bytes()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        filename = get_valid_filename(f"{case.name}_rev{revision.number}.nii.gz") or "labels.nii.gz"
        response = HttpResponse(data, content_type="application/gzip")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["ETag"] = f'"{revision.content_hash}-nifti"'
        response["Cache-Control"] = "private, no-transform"
        return response
