"""Server-rendered manager screens under ``/manage/``: projects and label classes, import, assignment,
dashboard, audit log, exports.

Views stay thin: they authorise through ``access``, call services, and turn a refused request into a
message on the page. Long-running work (imports, exports) is watched by small scripts in the templates that
poll the same REST endpoints the API clients use.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_http_methods

from annotator.models import Case, CaseStatus, ExportFormat, ExportJob, Membership, Project, Role
from annotator.services import access, cases, dashboard, exports, projects, workflow
from annotator.services.errors import Forbidden, NotFound, ServiceError

AUDIT_PAGE_SIZE = 100

ProjectView = Callable[[HttpRequest, Project], HttpResponseBase]


def manager_page(view: ProjectView) -> Callable[..., HttpResponseBase]:
    """Log-in required; the project must be one the user manages (404 for non-members, 403 otherwise)."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, project_id: int) -> HttpResponseBase:
        try:
            project = access.get_managed_project(request.user, project_id)
        except NotFound as exc:
            raise Http404(exc.message) from exc
        except Forbidden as exc:
            raise PermissionDenied(exc.message) from exc
        return view(request, project)

    return wrapper


def _render(
    request: HttpRequest, template: str, project: Project | None, context: dict[str, Any]
) -> HttpResponse:
    managed = Project.objects.filter(memberships__user=request.user, memberships__role=Role.MANAGER).order_by(
        "name"
    )
    return render(request, template, {"project": project, "managed_projects": managed, **context})


def _attempt(request: HttpRequest, action: Callable[[], Any], success: str) -> bool:
    """Run a service call; a refusal becomes an error message on the page instead of an error page."""
    try:
        action()
    except ServiceError as exc:
        messages.error(request, exc.message)
        return False
    messages.success(request, success)
    return True


def _int_or_none(raw: str | None) -> int | None:
    raw = (raw or "").strip()
    return int(raw) if raw.isdigit() else None


# --- home: projects ---------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def home(request: HttpRequest) -> HttpResponseBase:
    if request.method == "POST":
        created: list[Project] = []
        ok = _attempt(
            request,
            lambda: created.append(
                projects.create_project(
                    request.user, request.POST.get("name", ""), request.POST.get("description", "")
                )
            ),
            "Project created. Add its label classes and members next.",
        )
        if ok:
            return redirect("manage-project", project_id=created[0].pk)
        return redirect("manage-home")
    memberships = (
        Membership.objects.filter(user=request.user).select_related("project").order_by("project__name")
    )
    rows = [
        {"project": m.project, "role": m.role, "cases": Case.objects.filter(project=m.project).count()}
        for m in memberships
    ]
    return _render(
        request,
        "manage/home.html",
        None,
        {"rows": rows, "can_create": access.can_create_projects(request.user)},
    )


# --- project: label classes and members -------------------------------------------------------------------


@manager_page
@require_http_methods(["GET", "POST"])
def project_page(request: HttpRequest, project: Project) -> HttpResponseBase:
    if request.method == "POST":
        op = request.POST.get("op")
        if op == "add_label":
            _attempt(
                request,
                lambda: projects.create_label_class(
                    request.user,
                    project,
                    request.POST.get("name", ""),
                    value=_int_or_none(request.POST.get("value")),
                    color=(request.POST.get("color") or None),
                ),
                "Label class added.",
            )
        elif op == "delete_label":
            label_id = _int_or_none(request.POST.get("label_id")) or 0
            _attempt(
                request,
                lambda: projects.delete_label_class(
                    request.user, projects.get_label_class(project, label_id)
                ),
                "Label class removed.",
            )
        elif op == "add_member":
            _attempt(
                request,
                lambda: projects.add_member(
                    request.user, project, request.POST.get("role", ""), username=request.POST.get("username")
                ),
                "Member added.",
            )
        else:
            messages.error(request, "Unknown action.")
        return redirect("manage-project", project_id=project.pk)
    members = project.memberships.select_related("user").order_by("role", "user__username")
    return _render(
        request,
        "manage/project.html",
        project,
        {"labels": project.label_classes.all(), "members": members, "roles": Role.choices},
    )


# --- import -----------------------------------------------------------------------------------------------


@manager_page
def import_page(request: HttpRequest, project: Project) -> HttpResponseBase:
    jobs = project.import_jobs.select_related("created_by").prefetch_related("cases")[:20]
    return _render(request, "manage/import.html", project, {"jobs": jobs})


# --- cases and assignment ---------------------------------------------------------------------------------


@manager_page
@require_http_methods(["GET", "POST"])
def cases_page(request: HttpRequest, project: Project) -> HttpResponseBase:
    if request.method == "POST":
        case_ids = request.POST.getlist("case_ids")
        op = request.POST.get("op")
        if op == "bulk":
            given: dict[str, Any] = {}
            for field in ("assignee", "reviewer"):
                choice = request.POST.get(field, "")
                if choice == "none":
                    given[field] = None
                elif choice.isdigit():
                    given[field] = int(choice)
            _attempt(
                request,
                lambda: workflow.bulk_assign(request.user, project, case_ids, **given),
                f"Assigned {len(case_ids)} case(s).",
            )
        elif op == "round_robin":
            _attempt(
                request,
                lambda: workflow.round_robin_assign(
                    request.user,
                    project,
                    case_ids,
                    annotator_ids=request.POST.getlist("rr_annotators"),
                    reviewer_ids=request.POST.getlist("rr_reviewers"),
                ),
                f"Spread {len(case_ids)} case(s) round-robin.",
            )
        else:
            messages.error(request, "Unknown action.")
        query = request.POST.get("return_query", "")
        target = reverse("manage-cases", args=[project.pk])
        return redirect(f"{target}?{query}" if query else target)
    filters = {key: request.GET.get(key, "") for key in ("status", "assignee", "reviewer")}
    try:
        listing = cases.cases_for_listing(Case.objects.filter(project=project), {**filters, "project": ""})
    except ServiceError as exc:
        messages.error(request, exc.message)
        listing = cases.cases_for_listing(Case.objects.filter(project=project), {})
    people = workflow.assignable_people(project)
    return _render(
        request,
        "manage/cases.html",
        project,
        {
            "cases": listing[:1000],
            "total": listing.count(),
            "filters": filters,
            "statuses": CaseStatus.choices,
            "annotators": people["annotators"],
            "reviewers": people["reviewers"],
            "query": request.GET.urlencode(),
        },
    )


# --- dashboard and audit ----------------------------------------------------------------------------------


@manager_page
def dashboard_page(request: HttpRequest, project: Project) -> HttpResponseBase:
    board = dashboard.project_progress(project)
    total = board["total"] or 1
    bars = [
        {
            "status": status,
            "label": label,
            "count": board["by_status"][status],
            "percent": 100.0 * board["by_status"][status] / total,
        }
        for status, label in CaseStatus.choices
    ]
    return _render(request, "manage/dashboard.html", project, {"board": board, "bars": bars})


@manager_page
def audit_page(request: HttpRequest, project: Project) -> HttpResponseBase:
    filters = {key: request.GET.get(key, "").strip() for key in ("verb", "actor", "case", "since", "until")}
    active = {key: value for key, value in filters.items() if value}
    try:
        events = dashboard.audit_events(project, active)
        count = events.count()
    except ServiceError as exc:
        messages.error(request, exc.message)
        events, count = dashboard.audit_events(project, {}), 0
    page = max(_int_or_none(request.GET.get("page")) or 1, 1)
    rows = events[(page - 1) * AUDIT_PAGE_SIZE : page * AUDIT_PAGE_SIZE]
    base_query = urlencode(active)
    return _render(
        request,
        "manage/audit.html",
        project,
        {
            "events": rows,
            "count": count,
            "filters": filters,
            "verbs": dashboard.audit_verbs(project),
            "members": project.memberships.select_related("user").order_by("user__username"),
            "csv_url": f"/api/projects/{project.pk}/audit.csv" + (f"?{base_query}" if base_query else ""),
            "page": page,
            "previous_query": urlencode({**active, "page": page - 1}) if page > 1 else "",
            "next_query": urlencode({**active, "page": page + 1}) if page * AUDIT_PAGE_SIZE < count else "",
        },
    )


# --- exports ----------------------------------------------------------------------------------------------


@manager_page
@require_http_methods(["GET", "POST"])
def exports_page(request: HttpRequest, project: Project) -> HttpResponseBase:
    if request.method == "POST":
        if not request.POST.getlist("statuses"):
            messages.error(request, "Tick at least one case status to export.")
            return redirect("manage-exports", project_id=project.pk)
        _attempt(
            request,
            lambda: exports.create_export_job(
                request.user,
                project,
                request.POST.get("format", ""),
                statuses=request.POST.getlist("statuses"),
                dataset_id=request.POST.get("dataset_id") or None,
                dataset_name=request.POST.get("dataset_name") or None,
                channel_name=request.POST.get("channel_name") or None,
            ),
            "Export queued; it appears below and can be downloaded when ready.",
        )
        return redirect("manage-exports", project_id=project.pk)
    jobs = ExportJob.objects.filter(project=project).select_related("created_by")[:30]
    counts = dashboard.project_progress(project)["by_status"]
    return _render(
        request,
        "manage/exports.html",
        project,
        {
            "jobs": jobs,
            "formats": ExportFormat.choices,
            "statuses": [(value, label, counts[value]) for value, label in CaseStatus.choices],
            "default_dataset_id": (project.pk - 1) % 999 + 1,
        },
    )


urlpatterns = [
    path("", home, name="manage-home"),
    path("projects/<int:project_id>/", project_page, name="manage-project"),
    path("projects/<int:project_id>/import/", import_page, name="manage-import"),
    path("projects/<int:project_id>/cases/", cases_page, name="manage-cases"),
    path("projects/<int:project_id>/dashboard/", dashboard_page, name="manage-dashboard"),
    path("projects/<int:project_id>/audit/", audit_page, name="manage-audit"),
    path("projects/<int:project_id>/exports/", exports_page, name="manage-exports"),
]
