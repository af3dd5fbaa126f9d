"""URL table of /api/ (docs/ARCHITECTURE.md, "REST API")."""

from django.urls import include, path
from rest_framework.authtoken.views import obtain_auth_token

from annotator.api import views

urlpatterns = [
    # Live propagation (jobs, refinements, undo/redo, manual-edit POST on revisions/); first so it wins.
    path("", include("annotator.api.live")),
    path("auth/token/", obtain_auth_token, name="api-token"),
    path("me/", views.MeView.as_view(), name="api-me"),
    path("projects/", views.ProjectListView.as_view(), name="api-projects"),
    path("projects/<int:project_id>/", views.ProjectDetailView.as_view(), name="api-project"),
    path("projects/<int:project_id>/members/", views.MemberListView.as_view(), name="api-members"),
    path(
        "projects/<int:project_id>/members/<int:member_id>/",
        views.MemberDetailView.as_view(),
        name="api-member",
    ),
    path("projects/<int:project_id>/labels/", views.LabelListView.as_view(), name="api-labels"),
    path(
        "projects/<int:project_id>/labels/<int:label_id>/", views.LabelDetailView.as_view(), name="api-label"
    ),
    path("projects/<int:project_id>/imports/", views.ImportListView.as_view(), name="api-imports"),
    path("imports/<int:import_id>/", views.ImportDetailView.as_view(), name="api-import"),
    path("cases/", views.CaseListView.as_view(), name="api-cases"),
    path("cases/<int:case_id>/", views.CaseDetailView.as_view(), name="api-case"),
    path("cases/<int:case_id>/volume/", views.VolumeView.as_view(), name="api-volume"),
    path("cases/<int:case_id>/volume/voxels/", views.VolumeVoxelsView.as_view(), name="api-voxels"),
    path("cases/<int:case_id>/slices/<int:index>.png", views.SliceView.as_view(), name="api-slice"),
    path("cases/<int:case_id>/revisions/", views.RevisionListView.as_view(), name="api-revisions"),
    path(
        "cases/<int:case_id>/revisions/<int:revision_id>/",
        views.RevisionDetailView.as_view(),
        name="api-revision",
    ),
    path(
        "cases/<int:case_id>/revisions/<int:revision_id>/labels/",
        views.RevisionLabelsView.as_view(),
        name="api-revision-labels",
    ),
    path(
        "cases/<int:case_id>/revisions/<int:revision_id>/nifti/",
        views.RevisionNiftiView.as_view(),
        name="api-revision-nifti",
    ),
    path("", include("annotator.api.workflow")),  # workflow, assignment, dashboard, audit, exports
]
