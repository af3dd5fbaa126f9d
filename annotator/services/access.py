"""Who may see and change what. Every view and consumer asks these functions; none re-implements them.

Rules (issue 2): members see their project; managers see and change everything in it; annotators see the
cases assigned to them, reviewers the cases they review; nobody sees other projects. Objects a user may
not see are reported as "not found", so their existence does not leak.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet

from annotator.models import Case, Membership, Project, Role
from annotator.services.errors import Forbidden, NotFound

AnyUser = AbstractBaseUser | AnonymousUser


def role_in(user: AnyUser, project: Project) -> str | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, project=project).values_list("role", flat=True).first()


def projects_visible_to(user: AnyUser) -> QuerySet[Project]:
    if not user.is_authenticated:
        return Project.objects.none()
    return Project.objects.filter(memberships__user=user).distinct()


def cases_visible_to(user: AnyUser) -> QuerySet[Case]:
    if not user.is_authenticated:
        return Case.objects.none()
    member_of = Membership.objects.filter(user=user).values("project")
    manager_of = Membership.objects.filter(user=user, role=Role.MANAGER).values("project")
    return Case.objects.filter(
        Q(project__in=manager_of) | (Q(project__in=member_of) & (Q(assignee=user) | Q(reviewer=user)))
    )


def get_visible_project(user: AnyUser, project_id: int) -> tuple[Project, str]:
    """The project and the user's role in it; NotFound for non-members."""
    project = projects_visible_to(user).filter(pk=project_id).first()
    if project is None:
        raise NotFound("Project not found.", code="not_found")
    role = role_in(user, project)
    assert role is not None  # visible implies member
    return project, role


def get_managed_project(user: AnyUser, project_id: int) -> Project:
    project, role = get_visible_project(user, project_id)
    if role != Role.MANAGER:
        raise Forbidden("Only the project's managers may do this.", code="not_manager")
    return project


def get_visible_case(user: AnyUser, case_id: int) -> Case:
    case = cases_visible_to(user).select_related("project", "volume").filter(pk=case_id).first()
    if case is None:
        raise NotFound("Case not found.", code="not_found")
    return case


def is_member_of_case_project(user: AnyUser, case_id: int) -> bool:
    """Whether ``case_id`` exists in a project ``user`` belongs to (e.g. to tell "not yours" from "no such
    case" to a project member, who may know the case exists; to others both read the same)."""
    if not user.is_authenticated:
        return False
    member_of = Membership.objects.filter(user=user).values("project")
    return Case.objects.filter(pk=case_id, project__in=member_of).exists()


def is_manager(user: AnyUser, project: Project) -> bool:
    return role_in(user, project) == Role.MANAGER


def can_annotate(user: AnyUser, case: Case) -> bool:
    """Managers and the case's assignee may change its segmentation (the workflow may narrow this further)."""
    if not user.is_authenticated:
        return False
    return case.assignee_id == user.pk or is_manager(user, case.project)


def can_create_projects(user: AnyUser) -> bool:
    return bool(user.is_authenticated and (user.is_superuser or user.has_perm("annotator.add_project")))
