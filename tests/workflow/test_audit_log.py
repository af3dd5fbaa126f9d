"""The audit log as managers read it: filters, paging, CSV download (safe to open in a spreadsheet)."""

from __future__ import annotations

import csv
import io
import json

from annotator.models import AuditEvent
from annotator.services import workflow


def _csv(response) -> list[dict[str, str]]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    text = b"".join(response.streaming_content).decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _history(team, make_case):
    case = make_case(team.project, name="liver 7", assignee=team.annotator, reviewer=team.reviewer)
    workflow.transition(team.annotator, case, "start")
    workflow.transition(team.annotator, case, "submit")
    workflow.transition(team.reviewer, case, "start_review")
    workflow.transition(team.reviewer, case, "approve")
    return case


def test_audit_csv_lists_every_transition_with_who_and_when(team, make_case, api_client):
    case = _history(team, make_case)

    rows = _csv(api_client(team.manager).get(f"/api/projects/{team.project.pk}/audit.csv?verb=case."))

    transitions = [row for row in rows if row["verb"] != "case.created"]
    assert [row["verb"] for row in transitions] == [
        "case.approved",
        "case.review_started",
        "case.submitted",
        "case.started",
    ]
    assert [row["actor"] for row in transitions] == ["reviewer", "reviewer", "annotator", "annotator"]
    assert all(row["case_id"] == str(case.pk) and row["case"] == "liver 7" for row in transitions)
    assert json.loads(transitions[0]["data"])["to"] == "approved"
    assert all(row["time"].endswith("+00:00") for row in rows)


def test_audit_list_filters_by_actor_verb_and_case(team, make_case, api_client):
    case = _history(team, make_case)
    other = make_case(team.project, name="other", assignee=team.annotator)
    workflow.transition(team.annotator, other, "start")
    client = api_client(team.manager)
    url = f"/api/projects/{team.project.pk}/audit/"

    by_actor = client.get(url, {"actor": "reviewer"}).json()
    assert {e["verb"] for e in by_actor["results"]} == {"case.review_started", "case.approved"}
    by_case = client.get(url, {"case": other.pk, "verb": "case.started"}).json()
    assert by_case["count"] == 1 and by_case["results"][0]["case"] == other.pk
    by_id = client.get(url, {"actor": team.annotator.pk, "case": case.pk}).json()
    assert by_id["count"] == 2
    page = client.get(url, {"limit": 2, "offset": 1}).json()
    assert (
        len(page["results"]) == 2 and page["count"] == AuditEvent.objects.filter(project=team.project).count()
    )


def test_audit_date_filters_include_the_whole_day(team, make_case, api_client):
    _history(team, make_case)
    client = api_client(team.manager)
    url = f"/api/projects/{team.project.pk}/audit/"
    today = AuditEvent.objects.latest("id").created_at.date().isoformat()
    assert client.get(url, {"since": today, "until": today}).json()["count"] > 0
    assert client.get(url, {"until": "2000-01-01"}).json()["count"] == 0
    assert client.get(url, {"since": "yesterday"}).status_code == 400
    assert client.get(url, {"until": "2026-02-30"}).status_code == 400


def test_audit_csv_cells_cannot_run_as_spreadsheet_formulas(team, make_case, api_client):
    make_case(team.project, name='=HYPERLINK("http://evil")')
    rows = _csv(api_client(team.manager).get(f"/api/projects/{team.project.pk}/audit.csv"))
    assert rows[0]["case"].startswith("'=")


def test_only_the_projects_managers_read_its_audit_log(team, other_team, api_client):
    for user, code in ((team.annotator, 403), (team.reviewer, 403), (other_team.manager, 404)):
        assert api_client(user).get(f"/api/projects/{team.project.pk}/audit/").status_code == code
        assert api_client(user).get(f"/api/projects/{team.project.pk}/audit.csv").status_code == code
