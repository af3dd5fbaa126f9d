"""The manager screens under /manage/: who may open them, and that their forms really change things."""

from __future__ import annotations

import pytest

from annotator.models import AuditEvent, Case, CaseStatus, ExportJob, LabelClass, Membership, Project, Role

PAGES = ["", "import/", "cases/", "dashboard/", "audit/", "exports/"]


@pytest.mark.parametrize("page", PAGES)
def test_every_manager_screen_renders_for_the_projects_manager(team, make_case, client, page):
    make_case(team.project, name="liver 1", assignee=team.annotator)
    client.force_login(team.manager)
    response = client.get(f"/manage/projects/{team.project.pk}/{page}")
    assert response.status_code == 200
    html = response.content.decode()
    assert team.project.name in html
    assert "csrf-token" in html  # the page scripts can call the API


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize(("who", "code"), [("annotator", 403), ("reviewer", 403), ("other_manager", 404)])
def test_manager_screens_are_closed_to_everyone_else(team, other_team, client, page, who, code):
    user = other_team.manager if who == "other_manager" else team.member(who)
    client.force_login(user)
    assert client.get(f"/manage/projects/{team.project.pk}/{page}").status_code == code


def test_anonymous_visitors_are_sent_to_the_login_page(team, client):
    response = client.get(f"/manage/projects/{team.project.pk}/dashboard/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_creating_a_project_and_its_label_classes_from_the_screens(db, client):
    from tests.conftest import make_user

    boss = make_user("boss", can_create_projects=True)
    client.force_login(boss)
    response = client.post("/manage/", {"name": "Kidney MR", "description": "pilot"})
    project = Project.objects.get(name="Kidney MR")
    assert response.status_code == 302 and response["Location"] == f"/manage/projects/{project.pk}/"
    assert Membership.objects.get(project=project, user=boss).role == Role.MANAGER

    client.post(f"/manage/projects/{project.pk}/", {"op": "add_label", "name": "kidney", "color": "#00ff00"})
    client.post(
        f"/manage/projects/{project.pk}/",
        {"op": "add_label", "name": "cyst", "value": "7", "color": "#ff00ff"},
    )
    labels = list(LabelClass.objects.filter(project=project).values_list("name", "value", "color"))
    assert labels == [("kidney", 1, "#00ff00"), ("cyst", 7, "#ff00ff")]

    page = client.get(f"/manage/projects/{project.pk}/").content.decode()
    assert "kidney" in page and "cyst" in page


def test_a_refused_form_shows_the_reason_on_the_page(team, client):
    client.force_login(team.manager)
    response = client.post(
        f"/manage/projects/{team.project.pk}/",
        {"op": "add_label", "name": "liver", "color": "#123456"},
        follow=True,
    )
    assert response.status_code == 200
    assert LabelClass.objects.filter(project=team.project, name="liver").count() == 1
    assert 'class="error"' in response.content.decode()


def test_adding_a_member_from_the_project_screen(team, client):
    from tests.conftest import make_user

    make_user("newbie")
    client.force_login(team.manager)
    client.post(
        f"/manage/projects/{team.project.pk}/",
        {"op": "add_member", "username": "newbie", "role": "annotator"},
    )
    assert Membership.objects.get(project=team.project, user__username="newbie").role == Role.ANNOTATOR


def test_bulk_assignment_form_assigns_the_ticked_cases(team, make_case, client):
    cases = [make_case(team.project, name=f"c{i}") for i in range(3)]
    client.force_login(team.manager)
    response = client.post(
        f"/manage/projects/{team.project.pk}/cases/",
        {"op": "bulk", "case_ids": [cases[0].pk, cases[2].pk], "assignee": team.annotator.pk, "reviewer": ""},
    )
    assert response.status_code == 302
    assigned = {c.name: c.assignee_id for c in Case.objects.filter(project=team.project)}
    assert assigned == {"c0": team.annotator.pk, "c1": None, "c2": team.annotator.pk}


def test_round_robin_form_spreads_the_ticked_cases(team, make_case, client):
    from tests.conftest import make_user

    second = make_user("second")
    Membership.objects.create(project=team.project, user=second, role=Role.ANNOTATOR)
    cases = [make_case(team.project, name=f"c{i}") for i in range(4)]
    client.force_login(team.manager)
    client.post(
        f"/manage/projects/{team.project.pk}/cases/",
        {
            "op": "round_robin",
            "case_ids": [c.pk for c in cases],
            "rr_annotators": [team.annotator.pk, second.pk],
        },
    )
    owners = [Case.objects.get(pk=c.pk).assignee_id for c in cases]
    assert owners == [team.annotator.pk, second.pk, team.annotator.pk, second.pk]


def test_cases_screen_filters_by_status(team, make_case, client):
    make_case(team.project, name="fresh case")
    done = make_case(team.project, name="finished case")
    Case.objects.filter(pk=done.pk).update(status=CaseStatus.APPROVED)
    client.force_login(team.manager)
    html = client.get(f"/manage/projects/{team.project.pk}/cases/", {"status": "approved"}).content.decode()
    assert "finished case" in html and "fresh case" not in html


def test_dashboard_screen_shows_the_counts(team, make_case, client):
    for i in range(3):
        case = make_case(team.project, name=f"c{i}", assignee=team.annotator)
    Case.objects.filter(pk=case.pk).update(status=CaseStatus.APPROVED)
    client.force_login(team.manager)
    response = client.get(f"/manage/projects/{team.project.pk}/dashboard/")
    board = response.context["board"]
    assert board["by_status"]["approved"] == 1 and board["by_status"]["new"] == 2
    assert "Median time per case" in response.content.decode()


def test_audit_screen_filters_and_links_the_matching_csv(team, make_case, client):
    from annotator.services import workflow

    case = make_case(team.project, name="liver 9", assignee=team.annotator)
    workflow.transition(team.annotator, case, "start")
    client.force_login(team.manager)
    response = client.get(
        f"/manage/projects/{team.project.pk}/audit/", {"verb": "case.started", "actor": "annotator"}
    )
    assert [event.verb for event in response.context["events"]] == ["case.started"]
    assert (
        f"/api/projects/{team.project.pk}/audit.csv?verb=case.started&amp;actor=annotator"
        in response.content.decode()
    )


def test_export_form_queues_an_export_of_the_ticked_statuses(
    team, make_case, client, django_capture_on_commit_callbacks, monkeypatch
):
    from annotator.services import exports

    queued: list[int] = []
    monkeypatch.setattr(exports, "enqueue_export", queued.append)
    case = make_case(team.project, name="c1")
    Case.objects.filter(pk=case.pk).update(status=CaseStatus.SUBMITTED)
    client.force_login(team.manager)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            f"/manage/projects/{team.project.pk}/exports/",
            {
                "format": "nifti",
                "statuses": ["approved", "submitted"],
                "dataset_id": "12",
                "dataset_name": "x",
            },
        )
    job = ExportJob.objects.get()
    assert (job.format, job.options["statuses"], job.case_count) == ("nifti", ["submitted", "approved"], 1)
    assert queued == [job.pk]
    assert AuditEvent.objects.filter(verb="export.queued", actor=team.manager).exists()
    page = client.get(f"/manage/projects/{team.project.pk}/exports/").content.decode()
    assert f'data-export="{job.pk}"' in page and "/api/exports/${id}/" in page


def test_export_form_with_no_status_ticked_is_refused(team, make_case, client):
    client.force_login(team.manager)
    response = client.post(f"/manage/projects/{team.project.pk}/exports/", {"format": "nifti"}, follow=True)
    assert "Tick at least one case status" in response.content.decode()
    assert not ExportJob.objects.exists()


def test_deleting_an_export_removes_its_zip(
    team, make_case, api_client, stored_files, django_capture_on_commit_callbacks
):
    from annotator.services import exports

    case = make_case(team.project, name="c1")
    Case.objects.filter(pk=case.pk).update(status=CaseStatus.APPROVED)
    job = exports.create_export_job(team.manager, team.project, "nifti", enqueue=False)
    exports.run_export_job(job.pk)
    assert any(name.startswith("exports/") for name in stored_files())
    client = api_client(team.manager)
    with django_capture_on_commit_callbacks(execute=True):  # the file goes once the row deletion commits
        assert client.delete(f"/api/exports/{job.pk}/").status_code == 204
    assert not any(name.startswith("exports/") for name in stored_files())
    assert AuditEvent.objects.filter(verb="export.deleted").exists()
