"""Progress of a project for its managers (cases by status, per annotator and reviewer) and the audit log.

Definitions (shown on the dashboard next to the numbers):

* assigned: cases the person currently annotates, whatever their status;
* done: of those, approved;
* median time per case: median of ``submitted_at - started_at`` (first edit to the latest submission) over
  their cases that have been submitted at least once;
* rejections: how many times changes were requested on their cases (``Case.changes_requested_count``).

Counts come from a few aggregate queries on the case rows (milestones live on the row), never from scanning
the audit log.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Count, QuerySet, Sum
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from annotator.models import AuditEvent, Case, CaseStatus, Membership, Project, Role
from annotator.services.errors import InvalidInput


@dataclass
class PersonProgress:
    user_id: int
    username: str
    role: str
    assigned: int = 0
    done: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    median_seconds: float | None = None
    rejections: int = 0


@dataclass
class ReviewerProgress:
    user_id: int
    username: str
    role: str
    to_review: int = 0
    approved: int = 0
    reviewing: int = 0


def _empty_statuses() -> dict[str, int]:
    return {status: 0 for status in CaseStatus.values}


def project_progress(project: Project) -> dict[str, Any]:
    """The dashboard of ``project`` as plain JSON-able data."""
    cases = Case.objects.filter(project=project)
    by_status = _empty_statuses()
    for row in cases.values("status").annotate(n=Count("id")):
        by_status[row["status"]] = row["n"]

    roles = dict(Membership.objects.filter(project=project).values_list("user_id", "role"))
    users = {
        user.pk: user
        for user in get_user_model().objects.filter(
            pk__in=set(roles) | set(cases.exclude(assignee=None).values_list("assignee_id", flat=True))
        )
    }

    annotators: dict[int, PersonProgress] = {}

    def annotator(user_id: int) -> PersonProgress:
        if user_id not in annotators:
            user = users[user_id]
            annotators[user_id] = PersonProgress(
                user_id, user.get_username(), roles.get(user_id, ""), by_status=_empty_statuses()
            )
        return annotators[user_id]

    for user_id, role in roles.items():
        if role == Role.ANNOTATOR:
            annotator(user_id)
    for row in (
        cases.exclude(assignee=None)
        .values("assignee_id", "status")
        .annotate(n=Count("id"), rejections=Sum("changes_requested_count"))
    ):
        person = annotator(row["assignee_id"])
        person.by_status[row["status"]] = row["n"]
        person.assigned += row["n"]
        person.rejections += int(row["rejections"] or 0)
        if row["status"] == CaseStatus.APPROVED:
            person.done += row["n"]
    durations: dict[int, list[float]] = {}
    for assignee_id, started, submitted in (
        cases.exclude(assignee=None)
        .filter(started_at__isnull=False, submitted_at__isnull=False)
        .values_list("assignee_id", "started_at", "submitted_at")
    ):
        seconds = (submitted - started).total_seconds()
        if seconds >= 0:
            durations.setdefault(assignee_id, []).append(seconds)
    for user_id, values in durations.items():
        annotator(user_id).median_seconds = float(statistics.median(values))

    reviewers: dict[int, ReviewerProgress] = {}
    for user_id, role in roles.items():
        if role == Role.REVIEWER:
            user = users[user_id]
            reviewers[user_id] = ReviewerProgress(user_id, user.get_username(), role)
    for row in cases.exclude(reviewer=None).values("reviewer_id", "status").annotate(n=Count("id")):
        person = reviewers.get(row["reviewer_id"])
        if person is None:
            reviewer_user = get_user_model().objects.get(pk=row["reviewer_id"])
            person = reviewers[row["reviewer_id"]] = ReviewerProgress(
                reviewer_user.pk, reviewer_user.get_username(), roles.get(reviewer_user.pk, "")
            )
        if row["status"] == CaseStatus.SUBMITTED:
            person.to_review += row["n"]
        elif row["status"] == CaseStatus.IN_REVIEW:
            person.reviewing += row["n"]
        elif row["status"] == CaseStatus.APPROVED:
            person.approved += row["n"]

    total = sum(by_status.values())
    return {
        "project": project.pk,
        "total": total,
        "by_status": by_status,
        "approved_fraction": (by_status[CaseStatus.APPROVED] / total) if total else 0.0,
        "unassigned": cases.filter(assignee=None).count(),
        "without_reviewer": cases.filter(reviewer=None).count(),
        "annotators": [
            vars(person) for person in sorted(annotators.values(), key=lambda p: p.username.lower())
        ],
        "reviewers": [
            vars(person) for person in sorted(reviewers.values(), key=lambda p: p.username.lower())
        ],
    }


# --- the audit log, as managers read it -------------------------------------------------------------------

AUDIT_CSV_FIELDS = ["time", "actor", "verb", "case_id", "case", "object_type", "object_id", "data"]
# A spreadsheet runs cells starting with these as formulas (CSV injection); such cells get a leading quote.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _parse_when(raw: str, what: str, *, end_of_day: bool) -> datetime:
    # A bare date means the whole day (Django's parse_datetime would read "2026-01-31" as its midnight).
    try:
        day = parse_date(raw) if len(raw) == 10 else None
        value = datetime.combine(day, time.max if end_of_day else time.min) if day else parse_datetime(raw)
    except ValueError:  # well-formed but impossible, e.g. 2026-02-30
        value = None
    if value is None:
        raise InvalidInput(f"{what} must be a date (YYYY-MM-DD) or a date and time.", code="invalid_filter")
    if timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    return value


def audit_events(project: Project, filters: Mapping[str, Any]) -> QuerySet[AuditEvent]:
    """The project's audit events, newest first, filtered by ``verb`` (prefix, e.g. ``case.``),
    ``actor`` (user id or username), ``case`` (id), ``since`` / ``until`` (dates, inclusive)."""
    queryset = AuditEvent.objects.filter(project=project)
    verb = str(filters.get("verb") or "").strip()
    if verb:
        queryset = queryset.filter(verb__startswith=verb)
    actor = str(filters.get("actor") or "").strip()
    if actor:
        queryset = (
            queryset.filter(actor_id=int(actor))
            if actor.isdigit()
            else queryset.filter(actor__username=actor)
        )
    case = str(filters.get("case") or "").strip()
    if case:
        if not case.isdigit():
            raise InvalidInput("case must be a case id.", code="invalid_filter")
        queryset = queryset.filter(case_id=int(case))
    since = str(filters.get("since") or "").strip()
    if since:
        queryset = queryset.filter(created_at__gte=_parse_when(since, "since", end_of_day=False))
    until = str(filters.get("until") or "").strip()
    if until:
        queryset = queryset.filter(created_at__lte=_parse_when(until, "until", end_of_day=True))
    return queryset.select_related("actor", "case").order_by("-created_at", "-id")


def audit_verbs(project: Project) -> list[str]:
    return sorted(set(AuditEvent.objects.filter(project=project).values_list("verb", flat=True)))


def _csv_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def audit_csv_rows(queryset: QuerySet[AuditEvent]) -> Iterator[list[str]]:
    """Header then one row per event; streamed in chunks so a long log never sits in memory."""
    yield AUDIT_CSV_FIELDS
    for event in queryset.iterator(chunk_size=2000):
        yield [
            _csv_cell(value)
            for value in (
                event.created_at.astimezone(UTC).isoformat(),
                event.actor.get_username() if event.actor else "",
                event.verb,
                event.case_id or "",
                event.case.name if event.case else "",
                event.object_type,
                event.object_id,
                json.dumps(event.data, sort_keys=True, default=str),
            )
        ]
