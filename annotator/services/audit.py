"""The audit trail: one row per change, written inside the service's transaction."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import models as django_models

from annotator.models import AuditEvent, Case, Project


def record(
    actor: AbstractBaseUser | AnonymousUser | None,
    verb: str,
    *,
    project: Project | None = None,
    case: Case | None = None,
    obj: django_models.Model | None = None,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    if case is not None and project is None:
        project = case.project
    real_actor = actor if actor is not None and actor.is_authenticated else None
    return AuditEvent.objects.create(
        actor=real_actor,
        verb=verb,
        project=project,
        case=case,
        object_type=obj._meta.model_name if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        data=data or {},
    )
