"""Projects, their members (with roles) and their label classes."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from annotator.models import Case, LabelClass, Membership, Project, Role
from annotator.services import audit, storage
from annotator.services.access import AnyUser, can_create_projects
from annotator.services.errors import Conflict, Forbidden, InvalidInput, NotFound

HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")

# Distinct, readable on dark and light backgrounds; cycled for label classes created without a colour.
DEFAULT_LABEL_COLORS = (
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
    "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3",
)  # fmt: skip


def _clean_name(name: Any, what: str, max_length: int) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"The {what} name must not be empty.", code="name_required")
    name = name.strip()
    if len(name) > max_length:
        raise InvalidInput(f"The {what} name is longer than {max_length} characters.", code="name_too_long")
    return name


@transaction.atomic
def create_project(actor: AnyUser, name: str, description: str = "") -> Project:
    if not can_create_projects(actor):
        raise Forbidden("You may not create projects.", code="cannot_create_projects")
    project = Project.objects.create(
        name=_clean_name(name, "project", 200), description=description or "", created_by=actor
    )
    # Whoever creates a project manages it; without this nobody could open it.
    Membership.objects.create(project=project, user=actor, role=Role.MANAGER)
    audit.record(actor, "project.created", project=project, obj=project, data={"name": project.name})
    return project


@transaction.atomic
def update_project(actor: AnyUser, project: Project, changes: dict[str, Any]) -> Project:
    changed: dict[str, Any] = {}
    if "name" in changes:
        project.name = changed["name"] = _clean_name(changes["name"], "project", 200)
    if "description" in changes:
        project.description = changed["description"] = str(changes["description"] or "")
    if changed:
        project.save(update_fields=[*changed, "updated_at"])
        audit.record(actor, "project.updated", project=project, obj=project, data=changed)
    return project


def _stored_files_of_cases(cases: Any) -> list[str]:
    names: list[str] = []
    for case in cases.select_related("volume").prefetch_related("revisions"):
        volume = getattr(case, "volume", None)
        if volume is not None:
            names.append(volume.file.name)
            names.extend(volume.source_meta.get("source_files", []))
        names.extend(rev.file.name for rev in case.revisions.all())
    return names


@transaction.atomic
def delete_project(actor: AnyUser, project: Project) -> None:
    files = _stored_files_of_cases(Case.objects.filter(project=project))
    files.extend(job.file.name for job in project.export_jobs.all() if job.file)
    audit.record(actor, "project.deleted", project=project, obj=project, data={"name": project.name})
    project.delete()
    # Files go only once the rows are really gone (a rolled-back delete keeps its files).
    transaction.on_commit(lambda: storage.delete_files(files))


# --- members ----------------------------------------------------------------------------------------------


def _check_role(role: Any) -> str:
    if role not in Role.values:
        raise InvalidInput(
            f"Unknown role {role!r}; use one of {', '.join(Role.values)}.", code="invalid_role"
        )
    return str(role)


def _find_user(user_id: Any = None, username: Any = None) -> Any:
    user_model = get_user_model()
    query = user_model.objects.filter(is_active=True)
    if user_id is not None:
        user = query.filter(pk=user_id).first()
    elif username:
        user = query.filter(username=username).first()
    else:
        raise InvalidInput("Name the user to add (user id or username).", code="user_required")
    if user is None:
        raise InvalidInput("No such user.", code="unknown_user")
    return user


@transaction.atomic
def add_member(
    actor: AnyUser, project: Project, role: str, user_id: Any = None, username: Any = None
) -> Membership:
    user = _find_user(user_id, username)
    role = _check_role(role)
    try:
        with transaction.atomic():
            membership = Membership.objects.create(project=project, user=user, role=role)
    except IntegrityError as exc:
        raise Conflict(
            f"{user.get_username()} is already a member of this project.", code="already_member"
        ) from exc
    audit.record(actor, "member.added", project=project, obj=membership, data={"user": user.pk, "role": role})
    return membership


def _other_managers_exist(membership: Membership) -> bool:
    return (
        Membership.objects.filter(project_id=membership.project_id, role=Role.MANAGER)
        .exclude(pk=membership.pk)
        .exists()
    )


@transaction.atomic
def change_member_role(actor: AnyUser, membership: Membership, role: str) -> Membership:
    role = _check_role(role)
    if membership.role == Role.MANAGER and role != Role.MANAGER and not _other_managers_exist(membership):
        raise Conflict("A project needs at least one manager.", code="last_manager")
    old_role = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit.record(
        actor,
        "member.role_changed",
        project=membership.project,
        obj=membership,
        data={"user": membership.user_id, "from": old_role, "to": role},
    )
    return membership


@transaction.atomic
def remove_member(actor: AnyUser, membership: Membership) -> None:
    if membership.role == Role.MANAGER and not _other_managers_exist(membership):
        raise Conflict("A project needs at least one manager.", code="last_manager")
    project = membership.project
    # Cases keep no dangling assignment to someone who can no longer open them.
    Case.objects.filter(project=project, assignee_id=membership.user_id).update(assignee=None)
    Case.objects.filter(project=project, reviewer_id=membership.user_id).update(reviewer=None)
    audit.record(actor, "member.removed", project=project, obj=membership, data={"user": membership.user_id})
    membership.delete()


def get_membership(project: Project, membership_id: int) -> Membership:
    membership = (
        Membership.objects.select_related("user", "project").filter(project=project, pk=membership_id).first()
    )
    if membership is None:
        raise NotFound("Member not found.", code="not_found")
    return membership


# --- label classes ----------------------------------------------------------------------------------------


def _check_value(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise InvalidInput("A label value must be an integer from 1 to 255.", code="invalid_label_value")
    return value


def _check_color(color: Any) -> str:
    if not isinstance(color, str) or not HEX_COLOR.match(color):
        raise InvalidInput("A colour must be written #rrggbb.", code="invalid_color")
    return color.lower()


def _next_free_value(project: Project) -> int:
    used = set(project.label_classes.values_list("value", flat=True))
    for value in range(1, 256):
        if value not in used:
            return value
    raise Conflict("All 255 label values of this project are in use.", code="no_free_label_value")


def _save_label(label: LabelClass) -> None:
    try:
        with transaction.atomic():
            label.save()
    except IntegrityError as exc:
        raise Conflict(
            "Another label class of this project already uses this name or value.", code="label_taken"
        ) from exc


@transaction.atomic
def create_label_class(
    actor: AnyUser, project: Project, name: str, value: int | None = None, color: str | None = None
) -> LabelClass:
    value = _next_free_value(project) if value is None else _check_value(value)
    if color is None:
        color = DEFAULT_LABEL_COLORS[(value - 1) % len(DEFAULT_LABEL_COLORS)]
    label = LabelClass(
        project=project, name=_clean_name(name, "label", 100), value=value, color=_check_color(color)
    )
    _save_label(label)
    audit.record(
        actor, "label.created", project=project, obj=label, data={"name": label.name, "value": value}
    )
    return label


@transaction.atomic
def update_label_class(actor: AnyUser, label: LabelClass, changes: dict[str, Any]) -> LabelClass:
    changed: dict[str, Any] = {}
    if "name" in changes:
        label.name = changed["name"] = _clean_name(changes["name"], "label", 100)
    if "color" in changes:
        label.color = changed["color"] = _check_color(changes["color"])
    if "value" in changes and changes["value"] != label.value:
        # Stored revisions hold voxel values; renumbering would silently relabel every saved segmentation.
        raise InvalidInput("A label class's value cannot change once created.", code="label_value_immutable")
    if changed:
        _save_label(label)
        audit.record(actor, "label.updated", project=label.project, obj=label, data=changed)
    return label


@transaction.atomic
def delete_label_class(actor: AnyUser, label: LabelClass) -> None:
    audit.record(
        actor,
        "label.deleted",
        project=label.project,
        obj=label,
        data={"name": label.name, "value": label.value},
    )
    label.delete()


def get_label_class(project: Project, label_id: int) -> LabelClass:
    label = LabelClass.objects.select_related("project").filter(project=project, pk=label_id).first()
    if label is None:
        raise NotFound("Label class not found.", code="not_found")
    return label
