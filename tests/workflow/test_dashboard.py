"""The manager's progress dashboard: cases by status, per annotator and per reviewer."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from annotator.models import Case, CaseStatus, Membership, Role
from tests.conftest import make_user


def _case(make_case, team, name, status, assignee, reviewer=None, **fields):
    case = make_case(team.project, name=name, assignee=assignee, reviewer=reviewer)
    Case.objects.filter(pk=case.pk).update(status=status, **fields)
    return case


def test_dashboard_counts_cases_by_status_and_per_person(team, make_case, api_client):
    idle = make_user("idle")
    Membership.objects.create(project=team.project, user=idle, role=Role.ANNOTATOR)
    now = timezone.now()
    ann, rev = team.annotator, team.reviewer
    # Annotator: 5 cases; times to submit 10, 20, 60 minutes -> median 20 minutes; 3 rejections in total.
    _case(
        make_case,
        team,
        "a1",
        CaseStatus.APPROVED,
        ann,
        rev,
        started_at=now - timedelta(minutes=10),
        submitted_at=now,
        changes_requested_count=2,
    )
    _case(
        make_case,
        team,
        "a2",
        CaseStatus.APPROVED,
        ann,
        rev,
        started_at=now - timedelta(minutes=20),
        submitted_at=now,
    )
    _case(
        make_case,
        team,
        "a3",
        CaseStatus.IN_REVIEW,
        ann,
        rev,
        started_at=now - timedelta(minutes=60),
        submitted_at=now,
        changes_requested_count=1,
    )
    _case(make_case, team, "a4", CaseStatus.IN_PROGRESS, ann, started_at=now)
    _case(make_case, team, "a5", CaseStatus.SUBMITTED, ann, rev)
    _case(make_case, team, "u1", CaseStatus.NEW, None)
    _case(make_case, team, "u2", CaseStatus.NEW, None)

    response = api_client(team.manager).get(f"/api/projects/{team.project.pk}/dashboard/")

    assert response.status_code == 200
    board = response.json()
    assert board["total"] == 7
    assert board["by_status"] == {
        "new": 2, "in_progress": 1, "submitted": 1, "in_review": 1, "changes_requested": 0, "approved": 2,
    }  # fmt: skip
    assert board["unassigned"] == 2
    people = {row["username"]: row for row in board["annotators"]}
    assert set(people) == {"annotator", "idle"}
    assert people["annotator"]["assigned"] == 5
    assert people["annotator"]["done"] == 2
    assert people["annotator"]["rejections"] == 3
    assert people["annotator"]["median_seconds"] == 20 * 60
    assert people["idle"] == {
        **people["idle"],
        "assigned": 0,
        "done": 0,
        "median_seconds": None,
        "rejections": 0,
    }
    (reviewer,) = board["reviewers"]
    assert (reviewer["username"], reviewer["to_review"], reviewer["reviewing"], reviewer["approved"]) == (
        "reviewer",
        1,
        1,
        2,
    )


def test_dashboard_follows_real_transitions(team, make_case):
    from annotator.services import dashboard, workflow

    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    for actor, action, comment in [
        (team.annotator, "start", None),
        (team.annotator, "submit", None),
        (team.reviewer, "start_review", None),
        (team.reviewer, "request_changes", "fix slice 2"),
        (team.annotator, "start", None),
    ]:
        workflow.transition(actor, case, action, comment=comment)
    board = dashboard.project_progress(team.project)
    (row,) = [r for r in board["annotators"] if r["username"] == "annotator"]
    assert (row["assigned"], row["done"], row["rejections"]) == (1, 0, 1)
    assert row["by_status"]["in_progress"] == 1
    assert row["median_seconds"] is not None and row["median_seconds"] >= 0


def test_only_managers_see_the_dashboard(team, other_team, api_client):
    assert api_client(team.annotator).get(f"/api/projects/{team.project.pk}/dashboard/").status_code == 403
    assert (
        api_client(other_team.manager).get(f"/api/projects/{team.project.pk}/dashboard/").status_code == 404
    )
