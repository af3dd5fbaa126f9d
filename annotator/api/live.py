"""REST endpoints of live propagation (docs/ARCHITECTURE.md, "REST API"): thin views over
``services.propagation``. Jobs are answered at once with 202; their progress arrives over the WebSocket.
"""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from annotator.api import serializers as api
from annotator.api.views import RevisionListView
from annotator.services import propagation
from annotator.services.errors import InvalidInput


def _body(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise InvalidInput("The request body must be a JSON object.", code="invalid_body")
    return dict(request.data)


def _accepted(job: Any) -> Response:
    return Response(propagation.job_payload(job), status=status.HTTP_202_ACCEPTED)


class PropagationCreateView(GenericAPIView):
    @extend_schema(request=OpenApiTypes.OBJECT, responses={202: OpenApiTypes.OBJECT})
    def post(self, request: Request, case_id: int) -> Response:
        """``{label, prompt, base_revision, z_min?, z_max?}`` -> 202 job (queued)."""
        return _accepted(propagation.start_propagation(request.user, case_id, _body(request)))


class RefinementCreateView(GenericAPIView):
    @extend_schema(request=OpenApiTypes.OBJECT, responses={202: OpenApiTypes.OBJECT})
    def post(self, request: Request, case_id: int) -> Response:
        """``{label, base_revision, clicks: [{z,y,x,positive}], edited_slices: [{z, rle}]}`` -> 202 job."""
        return _accepted(propagation.start_refinement(request.user, case_id, _body(request)))


class RevisionListCreateView(RevisionListView):
    """GET lists the revisions (foundation view); POST saves manual edits as a new revision."""

    @extend_schema(request=OpenApiTypes.OBJECT, responses={201: api.RevisionSerializer})
    def post(self, request: Request, case_id: int) -> Response:
        revision = propagation.save_manual_edit(request.user, case_id, _body(request))
        context = {"current_revision_id": revision.pk}
        return Response(
            api.RevisionSerializer(revision, context=context).data, status=status.HTTP_201_CREATED
        )


class _MoveRevisionView(GenericAPIView):
    direction = "back"

    @extend_schema(request=OpenApiTypes.OBJECT, responses={200: OpenApiTypes.OBJECT})
    def post(self, request: Request, case_id: int) -> Response:
        """Optional ``{base_revision}`` (409 when stale) -> ``{case, current_revision}``."""
        case = propagation.move_revision(request.user, case_id, _body(request), self.direction)
        return Response({"case": case.pk, "current_revision": case.current_revision_id})


class UndoView(_MoveRevisionView):
    direction = "back"


class RedoView(_MoveRevisionView):
    direction = "forward"


class JobDetailView(GenericAPIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, job_id: int) -> Response:
        # Cheap when nothing is stale; makes a dead worker visible even when no other worker is alive.
        propagation.sweep_stale_jobs()
        return Response(propagation.job_payload(propagation.get_job(request.user, job_id)))


class JobCancelView(GenericAPIView):
    @extend_schema(request=None, responses={202: OpenApiTypes.OBJECT})
    def post(self, request: Request, job_id: int) -> Response:
        return _accepted(propagation.cancel_job(request.user, job_id))


urlpatterns = [
    path("cases/<int:case_id>/propagations/", PropagationCreateView.as_view(), name="api-propagations"),
    path("cases/<int:case_id>/refinements/", RefinementCreateView.as_view(), name="api-refinements"),
    # Listed before the foundation's GET-only route of the same path (api/urls.py includes this first).
    path("cases/<int:case_id>/revisions/", RevisionListCreateView.as_view(), name="api-revisions-live"),
    path("cases/<int:case_id>/undo/", UndoView.as_view(), name="api-undo"),
    path("cases/<int:case_id>/redo/", RedoView.as_view(), name="api-redo"),
    path("jobs/<int:job_id>/", JobDetailView.as_view(), name="api-job"),
    path("jobs/<int:job_id>/cancel/", JobCancelView.as_view(), name="api-job-cancel"),
]
