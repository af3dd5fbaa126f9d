"""Project set-up (members, label classes) and case assignment through the API."""

from __future__ import annotations


def test_a_manager_creates_a_project_and_manages_it(team, api_client):
    client = api_client(team.manager)

    created = client.post(
        "/api/projects/", {"name": "  Kidney study ", "description": "CT"}, format="json"
    ).json()

    assert created["name"] == "Kidney study" and created["role"] == "manager"
    assert client.get(f"/api/projects/{created['id']}/members/").json()[0]["user"]["username"] == "manager"


def test_a_user_is_added_by_username_with_a_role(team, outsider, api_client):
    client = api_client(team.manager)

    response = client.post(
        f"/api/projects/{team.project.pk}/members/",
        {"username": "outsider", "role": "reviewer"},
        format="json",
    )

    assert response.status_code == 201
    assert api_client(outsider).get(f"/api/projects/{team.project.pk}/").json()["role"] == "reviewer"
    again = client.post(
        f"/api/projects/{team.project.pk}/members/",
        {"username": "outsider", "role": "annotator"},
        format="json",
    )
    assert again.status_code == 409


def test_the_last_manager_cannot_leave_or_be_demoted(team, api_client):
    client = api_client(team.manager)
    membership = team.project.memberships.get(user=team.manager)
    url = f"/api/projects/{team.project.pk}/members/{membership.pk}/"

    assert client.patch(url, {"role": "annotator"}, format="json").json()["code"] == "last_manager"
    assert client.delete(url).status_code == 409


def test_a_removed_annotator_loses_their_assignments(team, make_case, api_client):
    case = make_case(team.project, assignee=team.annotator)
    membership = team.project.memberships.get(user=team.annotator)

    api_client(team.manager).delete(f"/api/projects/{team.project.pk}/members/{membership.pk}/")

    case.refresh_from_db()
    assert case.assignee is None
    assert api_client(team.annotator).get(f"/api/cases/{case.pk}/").status_code == 404


def test_label_classes_get_the_next_free_value_and_a_colour(team, api_client):
    client = api_client(team.manager)

    label = client.post(f"/api/projects/{team.project.pk}/labels/", {"name": "aorta"}, format="json").json()

    assert label["value"] == 3
    assert label["color"].startswith("#") and len(label["color"]) == 7


def test_label_values_and_names_are_unique_per_project(team, api_client):
    client = api_client(team.manager)
    url = f"/api/projects/{team.project.pk}/labels/"

    assert client.post(url, {"name": "other", "value": 1}, format="json").status_code == 409
    assert client.post(url, {"name": "liver", "value": 9}, format="json").status_code == 409
    assert client.post(url, {"name": "bad", "value": 300}, format="json").status_code == 400
    assert client.post(url, {"name": "bad", "color": "red"}, format="json").json()["code"] == "invalid_color"


def test_a_label_value_cannot_be_renumbered(team, api_client):
    label = team.project.label_classes.get(value=1)

    response = api_client(team.manager).patch(
        f"/api/projects/{team.project.pk}/labels/{label.pk}/", {"value": 7}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["code"] == "label_value_immutable"


def test_cases_are_assigned_only_to_fitting_members(team, other_team, make_case, api_client):
    case = make_case(team.project)
    client = api_client(team.manager)
    url = f"/api/cases/{case.pk}/"

    assert (
        client.patch(url, {"assignee": other_team.annotator.pk}, format="json").json()["code"]
        == "assignee_not_member"
    )
    assert (
        client.patch(url, {"reviewer": team.annotator.pk}, format="json").json()["code"]
        == "reviewer_wrong_role"
    )
    body = client.patch(
        url, {"assignee": team.annotator.pk, "reviewer": team.reviewer.pk}, format="json"
    ).json()
    assert (body["assignee"]["username"], body["reviewer"]["username"]) == ("annotator", "reviewer")


def test_the_assignee_may_lock_labels_but_not_reassign(team, make_case, api_client):
    case = make_case(team.project, assignee=team.annotator)
    client = api_client(team.annotator)

    assert client.patch(f"/api/cases/{case.pk}/", {"locked_labels": [2, 1]}, format="json").json()[
        "locked_labels"
    ] == [1, 2]
    assert (
        client.patch(f"/api/cases/{case.pk}/", {"locked_labels": [42]}, format="json").json()["code"]
        == "unknown_label"
    )
    assert client.patch(f"/api/cases/{case.pk}/", {"assignee": None}, format="json").status_code == 403


def test_cases_filter_by_project_status_and_assignee(team, make_case, api_client):
    from annotator.models import Case

    mine = make_case(team.project, name="mine", assignee=team.annotator)
    make_case(team.project, name="nobody's")
    Case.objects.filter(pk=mine.pk).update(status="in_progress")
    client = api_client(team.manager)

    def names(query: str) -> list[str]:
        return [case["name"] for case in client.get(f"/api/cases/?{query}").json()]

    assert names(f"project={team.project.pk}") == ["mine", "nobody's"]
    assert names("status=in_progress") == ["mine"]
    assert names("status=new,approved") == ["nobody's"]
    assert names(f"assignee={team.annotator.pk}") == ["mine"]
    assert names("assignee=none") == ["nobody's"]
    assert client.get("/api/cases/?assignee=me").status_code == 400


def test_listing_cases_costs_a_fixed_number_of_queries(
    team, make_case, api_client, django_assert_max_num_queries
):
    for index in range(5):
        make_case(team.project, name=f"case {index}", assignee=team.annotator)
    client = api_client(team.manager)

    with django_assert_max_num_queries(4):
        assert len(client.get("/api/cases/").json()) == 5


def test_deleting_a_case_removes_its_files(
    team, make_case, api_client, stored_files, django_capture_on_commit_callbacks
):
    case = make_case(team.project)
    assert stored_files()

    with django_capture_on_commit_callbacks(execute=True):
        response = api_client(team.manager).delete(f"/api/cases/{case.pk}/")

    assert response.status_code == 204
    assert stored_files() == []


def test_changes_are_audited(team, make_case, api_client):
    from annotator.models import AuditEvent

    case = make_case(team.project)
    api_client(team.manager).patch(f"/api/cases/{case.pk}/", {"assignee": team.annotator.pk}, format="json")

    event = AuditEvent.objects.get(verb="case.assigned")
    assert (event.actor, event.case_id, event.data) == (
        team.manager,
        case.pk,
        {"assignee": team.annotator.pk},
    )
