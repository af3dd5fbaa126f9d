"""Bulk and round-robin assignment of cases to annotators and reviewers."""

from __future__ import annotations

from collections import Counter

import pytest

from annotator.models import AuditEvent, Case, CaseStatus, Membership, Role
from tests.conftest import make_user


@pytest.fixture
def crowd(team):
    """Two more annotators and one more reviewer in the team's project."""
    people = {}
    for name, role in (("ann2", Role.ANNOTATOR), ("ann3", Role.ANNOTATOR), ("rev2", Role.REVIEWER)):
        people[name] = make_user(name)
        Membership.objects.create(project=team.project, user=people[name], role=role)
    return people


def test_bulk_assign_gives_every_selected_case_the_same_annotator_and_reviewer(team, make_case, api_client):
    cases = [make_case(team.project, name=f"c{i}") for i in range(3)]
    untouched = make_case(team.project, name="other")

    response = api_client(team.manager).post(
        f"/api/projects/{team.project.pk}/assignments/",
        {"case_ids": [c.pk for c in cases], "assignee": team.annotator.pk, "reviewer": team.reviewer.pk},
        format="json",
    )

    assert response.status_code == 200, response.content
    assert response.json()["changed"] == 3
    for case in cases:
        case.refresh_from_db()
        assert (case.assignee, case.reviewer) == (team.annotator, team.reviewer)
    untouched.refresh_from_db()
    assert untouched.assignee is None
    assert AuditEvent.objects.filter(verb="case.assigned", data__mode="bulk").count() == 3


def test_bulk_assign_of_only_the_reviewer_keeps_the_annotators(team, crowd, make_case, api_client):
    first = make_case(team.project, name="a", assignee=team.annotator)
    second = make_case(team.project, name="b", assignee=crowd["ann2"])

    response = api_client(team.manager).post(
        f"/api/projects/{team.project.pk}/assignments/",
        {"case_ids": [first.pk, second.pk], "reviewer": crowd["rev2"].pk},
        format="json",
    )

    assert response.status_code == 200
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.assignee, second.assignee) == (team.annotator, crowd["ann2"])
    assert first.reviewer == second.reviewer == crowd["rev2"]


def test_bulk_unassign_with_null(team, make_case, api_client):
    case = make_case(team.project, assignee=team.annotator)
    response = api_client(team.manager).post(
        f"/api/projects/{team.project.pk}/assignments/",
        {"case_ids": [case.pk], "assignee": None},
        format="json",
    )
    assert response.status_code == 200
    case.refresh_from_db()
    assert case.assignee is None


@pytest.mark.parametrize(
    ("field", "who", "code"),
    [
        ("assignee", "reviewer", "assignee_wrong_role"),
        ("reviewer", "annotator", "reviewer_wrong_role"),
        ("assignee", "other_annotator", "assignee_not_member"),
    ],
)
def test_bulk_assign_refuses_people_with_the_wrong_role_or_project(
    team, other_team, make_case, api_client, field, who, code
):
    case = make_case(team.project)
    user = other_team.annotator if who == "other_annotator" else team.member(who)
    response = api_client(team.manager).post(
        f"/api/projects/{team.project.pk}/assignments/",
        {"case_ids": [case.pk], field: user.pk},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["code"] == code
    case.refresh_from_db()
    assert case.assignee is None and case.reviewer is None


def test_nobody_reviews_a_case_they_annotate(team, make_case, api_client):
    case = make_case(team.project, assignee=team.manager)
    response = api_client(team.manager).post(
        f"/api/projects/{team.project.pk}/assignments/",
        {"case_ids": [case.pk], "reviewer": team.manager.pk},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["code"] == "reviewer_is_assignee"


def test_cases_of_another_project_cannot_be_assigned(team, other_team, make_case, api_client):
    foreign = make_case(other_team.project)
    response = api_client(team.manager).post(
        f"/api/projects/{team.project.pk}/assignments/",
        {"case_ids": [foreign.pk], "assignee": team.annotator.pk},
        format="json",
    )
    assert response.status_code == 404
    foreign.refresh_from_db()
    assert foreign.assignee is None


@pytest.mark.parametrize("who", ["annotator", "reviewer"])
def test_only_managers_assign(team, make_case, api_client, who):
    case = make_case(team.project)
    client = api_client(team.member(who))
    body = {"case_ids": [case.pk], "assignee": team.annotator.pk}
    assert (
        client.post(f"/api/projects/{team.project.pk}/assignments/", body, format="json").status_code == 403
    )
    body = {"case_ids": [case.pk], "annotators": [team.annotator.pk]}
    url = f"/api/projects/{team.project.pk}/assignments/round-robin/"
    assert client.post(url, body, format="json").status_code == 403


def test_round_robin_spreads_cases_evenly_in_the_chosen_order(team, crowd, make_case, api_client):
    cases = [make_case(team.project, name=f"c{i:02d}") for i in range(7)]
    annotators = [team.annotator, crowd["ann2"], crowd["ann3"]]

    response = api_client(team.manager).post(
        f"/api/projects/{team.project.pk}/assignments/round-robin/",
        {
            "case_ids": [c.pk for c in cases],
            "annotators": [u.pk for u in annotators],
            "reviewers": [team.reviewer.pk, crowd["rev2"].pk],
        },
        format="json",
    )

    assert response.status_code == 200, response.content
    order = [Case.objects.get(pk=c.pk) for c in cases]
    assert [c.assignee for c in order] == [annotators[i % 3] for i in range(7)]
    assert Counter(c.reviewer_id for c in order) == {team.reviewer.pk: 4, crowd["rev2"].pk: 3}


def test_round_robin_catches_up_people_with_fewer_open_cases(team, crowd, make_case, api_client):
    for i in range(2):
        make_case(team.project, name=f"busy{i}", assignee=team.annotator)
    # Approved work does not count as load.
    done = make_case(team.project, name="done", assignee=crowd["ann2"])
    Case.objects.filter(pk=done.pk).update(status=CaseStatus.APPROVED)
    new = [make_case(team.project, name=f"n{i}") for i in range(4)]

    response = api_client(team.manager).post(
        f"/api/projects/{team.project.pk}/assignments/round-robin/",
        {"case_ids": [c.pk for c in new], "annotators": [team.annotator.pk, crowd["ann2"].pk]},
        format="json",
    )

    assert response.status_code == 200
    counts = Counter(Case.objects.get(pk=c.pk).assignee_id for c in new)
    # ann2 gets 3 of 4 so that both end with 3 open cases.
    assert counts == {crowd["ann2"].pk: 3, team.annotator.pk: 1}


def test_round_robin_never_makes_a_manager_review_their_own_case(team, make_case, api_client):
    cases = [make_case(team.project, name=f"c{i}", assignee=team.manager) for i in range(4)]
    response = api_client(team.manager).post(
        f"/api/projects/{team.project.pk}/assignments/round-robin/",
        {"case_ids": [c.pk for c in cases], "reviewers": [team.manager.pk, team.reviewer.pk]},
        format="json",
    )
    assert response.status_code == 200
    assert all(Case.objects.get(pk=c.pk).reviewer == team.reviewer for c in cases)


def test_round_robin_needs_somebody_to_assign(team, make_case, api_client):
    case = make_case(team.project)
    response = api_client(team.manager).post(
        f"/api/projects/{team.project.pk}/assignments/round-robin/", {"case_ids": [case.pk]}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "nothing_to_assign"
