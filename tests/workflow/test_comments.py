"""Comments on a case: threaded replies, the slice they refer to, who may write them."""

from __future__ import annotations

import pytest

from annotator.models import AuditEvent


@pytest.mark.parametrize("who", ["annotator", "reviewer", "manager"])
def test_everyone_working_on_the_case_can_comment_on_a_slice(team, make_case, api_client, who):
    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    response = api_client(team.member(who)).post(
        f"/api/cases/{case.pk}/comments/", {"text": "Lesion edge unclear here", "slice_z": 3}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["text"], body["slice_z"], body["author"]["id"]) == (
        "Lesion edge unclear here",
        3,
        team.member(who).pk,
    )
    assert AuditEvent.objects.filter(case=case, verb="comment.created").count() == 1


def test_replies_form_a_thread_and_inherit_the_slice(team, make_case, api_client):
    case = make_case(team.project, assignee=team.annotator, reviewer=team.reviewer)
    reviewer, annotator = api_client(team.reviewer), api_client(team.annotator)
    question = reviewer.post(
        f"/api/cases/{case.pk}/comments/", {"text": "Is this vessel?", "slice_z": 2}, format="json"
    ).json()
    answer = annotator.post(
        f"/api/cases/{case.pk}/comments/",
        {"text": "Yes, portal vein", "parent": question["id"]},
        format="json",
    ).json()

    listing = reviewer.get(f"/api/cases/{case.pk}/comments/").json()

    assert [c["id"] for c in listing] == [question["id"], answer["id"]]
    assert listing[1]["parent"] == question["id"]
    assert listing[1]["slice_z"] == 2


def test_a_reply_to_a_comment_of_another_case_is_refused(team, make_case, api_client):
    first = make_case(team.project, name="first", assignee=team.annotator)
    second = make_case(team.project, name="second", assignee=team.annotator)
    client = api_client(team.annotator)
    parent = client.post(f"/api/cases/{first.pk}/comments/", {"text": "here"}, format="json").json()
    response = client.post(
        f"/api/cases/{second.pk}/comments/", {"text": "re", "parent": parent["id"]}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "bad_parent"


def test_a_slice_outside_the_volume_is_refused(team, make_case, api_client):
    case = make_case(team.project, assignee=team.annotator)  # 6 slices
    response = api_client(team.annotator).post(
        f"/api/cases/{case.pk}/comments/", {"text": "here", "slice_z": 6}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "slice_out_of_range"


def test_an_empty_comment_is_refused(team, make_case, api_client):
    case = make_case(team.project, assignee=team.annotator)
    response = api_client(team.annotator).post(
        f"/api/cases/{case.pk}/comments/", {"text": "  "}, format="json"
    )
    assert response.status_code == 400


def test_people_who_cannot_see_the_case_cannot_read_or_write_its_comments(
    team, other_team, make_case, api_client
):
    case = make_case(team.project, assignee=team.annotator)
    client = api_client(other_team.manager)
    assert client.get(f"/api/cases/{case.pk}/comments/").status_code == 404
    assert client.post(f"/api/cases/{case.pk}/comments/", {"text": "hi"}, format="json").status_code == 404
