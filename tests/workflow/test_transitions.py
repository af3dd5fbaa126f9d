"""Case workflow: every action x every status x every relation to the case, over HTTP.

The expected table is written out here by hand from issue 7 (not derived from the service's own table), so
a wrong rule in ``annotator/services/workflow.py`` makes a row fail.
"""

from __future__ import annotations

import itertools

import pytest

from annotator.models import AuditEvent, Case, CaseStatus, Comment

STATUSES = ["new", "in_progress", "submitted", "in_review", "changes_requested", "approved"]
ACTIONS = ["start", "submit", "start_review", "approve", "request_changes", "reopen"]
ROLES = ["annotator", "reviewer", "manager"]

# (who, action, from) -> to. Everything not listed is refused.
ALLOWED = {
    ("annotator", "start", "new"): "in_progress",
    ("annotator", "start", "changes_requested"): "in_progress",
    ("annotator", "submit", "in_progress"): "submitted",
    ("reviewer", "start_review", "submitted"): "in_review",
    ("reviewer", "approve", "in_review"): "approved",
    ("reviewer", "request_changes", "in_review"): "changes_requested",
    ("manager", "reopen", "submitted"): "in_progress",
    ("manager", "reopen", "in_review"): "in_progress",
    ("manager", "reopen", "changes_requested"): "in_progress",
    ("manager", "reopen", "approved"): "in_progress",
}
# Which role an action belongs to at all: another role gets 403, the right role in a wrong state 409.
ACTION_ROLE = {
    "start": "annotator",
    "submit": "annotator",
    "start_review": "reviewer",
    "approve": "reviewer",
    "request_changes": "reviewer",
    "reopen": "manager",
}


def _expected(role: str, action: str, status: str) -> tuple[int, str]:
    if (role, action, status) in ALLOWED:
        return 200, ALLOWED[(role, action, status)]
    return (409 if ACTION_ROLE[action] == role else 403), status


@pytest.mark.parametrize(("role", "action", "status"), list(itertools.product(ROLES, ACTIONS, STATUSES)))
def test_transition_is_allowed_or_refused_as_the_role_table_says(
    team, make_case, api_client, role, action, status
):
    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    Case.objects.filter(pk=case.pk).update(status=status)
    events_before = AuditEvent.objects.count()

    response = api_client(team.member(role)).post(
        f"/api/cases/{case.pk}/transitions/",
        {"action": action, "comment": "Boundary on slice 3 leaks into the kidney."},
        format="json",
    )

    code, new_status = _expected(role, action, status)
    assert response.status_code == code, response.content
    case.refresh_from_db()
    assert case.status == new_status
    if code == 200:
        assert response.json()["status"] == new_status
        event = AuditEvent.objects.filter(case=case).latest("id")
        assert event.actor == team.member(role)
        assert event.data["from"] == status and event.data["to"] == new_status
    else:
        assert response.json()["detail"]  # a message the user can read
        assert AuditEvent.objects.count() == events_before
        assert response.json()["code"] == ("invalid_transition" if code == 409 else "transition_forbidden")


def test_whole_happy_path_with_one_round_of_changes(team, make_case, api_client):
    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    annotator, reviewer = api_client(team.annotator), api_client(team.reviewer)
    steps = [
        (annotator, "start", "in_progress"),
        (annotator, "submit", "submitted"),
        (reviewer, "start_review", "in_review"),
        (reviewer, "request_changes", "changes_requested"),
        (annotator, "start", "in_progress"),
        (annotator, "submit", "submitted"),
        (reviewer, "start_review", "in_review"),
        (reviewer, "approve", "approved"),
    ]
    for client, action, expected in steps:
        response = client.post(
            f"/api/cases/{case.pk}/transitions/", {"action": action, "comment": "see slice 4"}, format="json"
        )
        assert response.status_code == 200, (action, response.content)
        assert response.json()["status"] == expected
    case.refresh_from_db()
    assert case.changes_requested_count == 1
    assert case.started_at is not None and case.submitted_at is not None and case.approved_at is not None
    verbs = list(
        AuditEvent.objects.filter(case=case, verb__startswith="case.")
        .order_by("id")
        .values_list("verb", flat=True)
    )
    assert verbs[-8:] == [
        "case.started",
        "case.submitted",
        "case.review_started",
        "case.changes_requested",
        "case.started",
        "case.submitted",
        "case.review_started",
        "case.approved",
    ]


def test_requesting_changes_without_a_comment_is_refused_and_changes_nothing(team, make_case, api_client):
    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    Case.objects.filter(pk=case.pk).update(status=CaseStatus.IN_REVIEW)
    response = api_client(team.reviewer).post(
        f"/api/cases/{case.pk}/transitions/", {"action": "request_changes", "comment": "   "}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "comment_required"
    case.refresh_from_db()
    assert case.status == CaseStatus.IN_REVIEW
    assert not Comment.objects.filter(case=case).exists()


def test_request_changes_comment_is_stored_on_the_case_with_its_slice(team, make_case, api_client):
    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    Case.objects.filter(pk=case.pk).update(status=CaseStatus.IN_REVIEW)
    response = api_client(team.reviewer).post(
        f"/api/cases/{case.pk}/transitions/",
        {"action": "request_changes", "comment": "Missed the caudate lobe", "slice_z": 4},
        format="json",
    )
    assert response.status_code == 200
    comment = Comment.objects.get(case=case)
    assert (comment.text, comment.slice_z, comment.author) == ("Missed the caudate lobe", 4, team.reviewer)
    event = AuditEvent.objects.get(case=case, verb="case.changes_requested")
    assert event.data["comment"] == comment.pk


def test_annotator_who_is_not_assigned_cannot_see_the_case_to_move_it(team, make_case, api_client):
    from annotator.models import Membership, Role
    from tests.conftest import make_user

    colleague = make_user("colleague")
    Membership.objects.create(project=team.project, user=colleague, role=Role.ANNOTATOR)
    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    Case.objects.filter(pk=case.pk).update(status=CaseStatus.IN_PROGRESS)
    response = api_client(colleague).post(
        f"/api/cases/{case.pk}/transitions/", {"action": "submit"}, format="json"
    )
    assert response.status_code == 404


@pytest.mark.parametrize("who", ["other_manager", "outsider", "anonymous"])
def test_people_outside_the_project_cannot_move_its_cases(
    team, other_team, outsider, make_case, api_client, who
):
    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    Case.objects.filter(pk=case.pk).update(status=CaseStatus.APPROVED)
    user = {"other_manager": other_team.manager, "outsider": outsider, "anonymous": None}[who]
    response = api_client(user).post(
        f"/api/cases/{case.pk}/transitions/", {"action": "reopen"}, format="json"
    )
    assert response.status_code == (401 if user is None else 404)
    case.refresh_from_db()
    assert case.status == CaseStatus.APPROVED


def test_a_manager_who_reviews_the_case_may_approve_it(team, make_case, api_client):
    case = make_case(team.project, assignee=team.annotator, reviewer=team.manager)
    Case.objects.filter(pk=case.pk).update(status=CaseStatus.SUBMITTED)
    client = api_client(team.manager)
    assert (
        client.post(
            f"/api/cases/{case.pk}/transitions/", {"action": "start_review"}, format="json"
        ).status_code
        == 200
    )
    assert (
        client.post(f"/api/cases/{case.pk}/transitions/", {"action": "approve"}, format="json").status_code
        == 200
    )


def test_unknown_action_is_a_bad_request(team, make_case, api_client):
    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    response = api_client(team.manager).post(
        f"/api/cases/{case.pk}/transitions/", {"action": "publish"}, format="json"
    )
    assert response.status_code == 400


def test_viewer_gets_the_buttons_it_may_show(team, make_case, api_client):
    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    Case.objects.filter(pk=case.pk).update(status=CaseStatus.IN_REVIEW)
    reviewer_state = api_client(team.reviewer).get(f"/api/cases/{case.pk}/transitions/").json()
    assert reviewer_state["allowed_actions"] == ["approve", "request_changes"]
    assert reviewer_state["may_edit_labels"] is True
    annotator_state = api_client(team.annotator).get(f"/api/cases/{case.pk}/transitions/").json()
    assert annotator_state["allowed_actions"] == []
    assert annotator_state["may_edit_labels"] is False
    manager_state = api_client(team.manager).get(f"/api/cases/{case.pk}/transitions/").json()
    assert manager_state["allowed_actions"] == ["reopen"]


def test_each_transition_publishes_the_new_status_only_after_commit(
    team, make_case, monkeypatch, django_capture_on_commit_callbacks
):
    from annotator import events
    from annotator.services import workflow

    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(events, "_group_send", lambda group, event: sent.append((group, event)))
    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        workflow.transition(team.annotator, case, "start")
        assert sent == []  # nothing leaves before the transaction commits
    for callback in callbacks:
        callback()
    status_events = [event for _, event in sent if event["type"] == "case.status"]
    assert status_events and status_events[-1]["status"] == "in_progress"
    assert status_events[-1]["case"] == case.pk
    assert sent[-1][0] == f"case_{case.pk}"


def test_a_refused_transition_publishes_nothing(
    team, make_case, monkeypatch, django_capture_on_commit_callbacks
):
    from annotator import events
    from annotator.services import workflow
    from annotator.services.errors import Conflict

    sent: list = []
    monkeypatch.setattr(events, "_group_send", lambda group, event: sent.append(event))
    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(Conflict):
        workflow.transition(team.annotator, case, "submit")
    assert sent == []


def test_first_edit_by_the_assignee_starts_the_case_but_not_an_edit_by_others(team, make_case):
    from annotator.services import workflow

    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    workflow.note_edit_started(team.manager, case)
    case.refresh_from_db()
    assert case.status == CaseStatus.NEW
    workflow.note_edit_started(team.annotator, case)
    case.refresh_from_db()
    assert case.status == CaseStatus.IN_PROGRESS
    started = case.started_at
    workflow.note_edit_started(team.annotator, case)  # no-op the second time
    case.refresh_from_db()
    assert case.started_at == started and case.status == CaseStatus.IN_PROGRESS


def test_an_annotator_taken_off_the_case_can_no_longer_submit_it(team, make_case):
    from annotator.services import workflow
    from annotator.services.errors import Forbidden

    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    workflow.transition(team.annotator, case, "start")
    stale_copy = Case.objects.get(pk=case.pk)
    workflow.bulk_assign(team.manager, team.project, [case.pk], assignee=team.manager.pk)

    with pytest.raises(Forbidden):
        workflow.transition(team.annotator, stale_copy, "submit")
    case.refresh_from_db()
    assert case.status == CaseStatus.IN_PROGRESS
